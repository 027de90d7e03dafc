"""Task name → Task. A miss raises `NotRegistered` naming the task."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac.exceptions import NotRegistered

if TYPE_CHECKING:
    from collections.abc import Iterator

    from celeriac.app.task import Task

__all__ = ["TaskRegistry"]

# Built-in task names are Celery's, so stock clients can send them.
BUILTIN_PREFIX = "celery."


class TaskRegistry:
    """The tasks an app knows, by name."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task[Any, Any]] = {}

    def register(self, task: Task[Any, Any]) -> None:
        self._tasks[task.name] = task

    def unregister(self, name: str) -> None:
        if self._tasks.pop(name, None) is None:
            raise NotRegistered(name)

    def __getitem__(self, name: str) -> Task[Any, Any]:
        try:
            return self._tasks[name]
        except KeyError:
            raise NotRegistered(name) from None

    def get(self, name: str) -> Task[Any, Any] | None:
        return self._tasks.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def user_tasks(self) -> list[str]:
        """Registered names without Celery's built-ins, sorted."""
        return sorted(name for name in self._tasks if not name.startswith(BUILTIN_PREFIX))
