"""Watch a fleet's events for ten seconds with `app.events`, then print what they said."""

from __future__ import annotations

from fleet import app


def main() -> None:
    state = app.events.State()
    receiver = app.events.Receiver(handlers={"*": state.event})
    add = app.tasks["fleet.add"]
    add.apply_async((1, 2), countdown=1)
    receiver.capture(timeout=10)
    for worker in state.workers.values():
        print(f"{worker.hostname}: {'alive' if worker.alive else 'gone'}, "
              f"{worker.processed} processed")  # fmt: skip
    for task in state.tasks.values():
        print(f"{task.uuid} {task.name} {task.state} runtime={task.runtime}")


if __name__ == "__main__":
    main()
