"""`celeriac -A tasks inspect <method>`: ask workers (celeriac or Celery) what they do.

Thin over `app.control.inspect()`: `ping`, `stats`, `active`, `reserved`, `scheduled`,
`revoked`, `registered`, `query_task <id>...`, `conf`, `report`, `active_queues`,
`clock`. Exit code 69 when no worker answered within `--timeout`.
"""

from __future__ import annotations

from typing import Any

import click

from celeriac.cli import EX_USAGE, AppContext, cli, fail
from celeriac.cli.replies import addressing_options, destination_list, print_replies

__all__ = ["inspect"]

# Method -> what it answers (the help text lists them).
METHODS: dict[str, str] = {
    "ping": "Is the worker alive? (pong)",
    "stats": "Counters and the pool, broker and process of each worker.",
    "active": "Tasks running now.",
    "reserved": "Tasks prefetched, not started.",
    "scheduled": "ETA tasks held in memory (celeriac keeps them in the broker).",
    "revoked": "Revoked task ids the worker knows.",
    "registered": "Task names the worker can run.",
    "query_task": "Where the given task ids are (active, reserved).",
    "conf": "The worker's changed settings.",
    "report": "Versions, platform and settings.",
    "active_queues": "Queues the worker consumes.",
    "clock": "The worker's logical clock.",
}


@cli.command(
    epilog="Methods:\n\n\b\n" + "\n".join(f"  {name:<14} {text}" for name, text in METHODS.items())
)
@click.argument("method", type=click.Choice(sorted(METHODS)))
@click.argument("arguments", nargs=-1)
@addressing_options
@click.pass_obj
def inspect(
    ctx: AppContext,
    /,
    method: str,
    arguments: tuple[str, ...],
    timeout: float,
    destination: str | None,
    as_json: bool,
) -> None:
    """Ask workers: `celeriac -A tasks inspect ping` (exit 69 if none answers)."""
    if arguments and method not in ("query_task", "registered"):
        fail(f"inspect {method} takes no arguments (got {' '.join(arguments)})", EX_USAGE)
    inspector = ctx.app.control.inspect(timeout=timeout, destination=destination_list(destination))
    call: Any = getattr(inspector, method)
    replies = call(*arguments)
    print_replies(replies, as_json=as_json)
