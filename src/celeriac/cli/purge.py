"""`celeriac -A tasks purge`: delete every waiting message of the app's queues.

Celery's options: `-Q` (these queues), `-X` (all but these), `-f` (do not ask). Without
`-f` it asks first, naming the queues; there is no undo.
"""

from __future__ import annotations

import click

from celeriac.cli import EX_USAGE, AppContext, cli, fail

__all__ = ["purge"]


def known_queues(ctx: AppContext) -> list[str]:
    """The app's queues: the default one and every queue its routes name."""
    app = ctx.app
    names = [str(app.conf.task_default_queue)]
    for queue in app.conf.get("task_queues") or ():
        names.append(str(getattr(queue, "name", queue)))
    routes = app.conf.task_routes
    if isinstance(routes, dict):
        for route in routes.values():
            if isinstance(route, dict) and route.get("queue"):
                names.append(str(route["queue"]))
    return list(dict.fromkeys(names))


def _split(values: tuple[str, ...]) -> list[str]:
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


@cli.command()
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("-Q", "--queues", multiple=True, help="Purge these queues (comma-separated).")
@click.option(
    "-X", "--exclude-queues", multiple=True, help="Purge all but these (comma-separated)."
)
@click.pass_obj
def purge(
    ctx: AppContext, /, force: bool, queues: tuple[str, ...], exclude_queues: tuple[str, ...]
) -> None:
    """Delete every waiting task of the app's queues (no undo)."""
    names = _split(queues) or known_queues(ctx)
    excluded = set(_split(exclude_queues))
    names = [name for name in names if name not in excluded]
    if not names:
        fail("no queue left to purge (every queue is excluded by -X)", EX_USAGE)
    plural = "queue" if len(names) == 1 else "queues"
    if not force:
        click.confirm(
            f"WARNING: This will remove all tasks from {plural} {', '.join(names)}.\n"
            "         There is no undo for this operation!\n\n"
            "Are you sure you want to delete all tasks?",
            abort=True,
        )
    broker = ctx.app.broker
    purged = sum(broker.purge(name) for name in names)
    if purged:
        messages = "message" if purged == 1 else "messages"
        click.echo(f"Purged {purged} {messages} from {len(names)} known task {plural}.")
    else:
        click.echo(f"No messages purged from {len(names)} {plural}.")
