"""`celeriac -A tasks events`: watch workers and tasks live, or `--dump` every event.

Thin over `app.events.Receiver` and `State`. The live view redraws a plain table of the
workers (alive or not, active, processed) and the latest tasks once a second; `--dump`
prints one line per event, as `celery events --dump` does.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

import click

from celeriac.cli import AppContext, cli

__all__ = ["events"]

# Tasks the live view shows.
SHOWN_TASKS = 20


def _when(timestamp: Any) -> str:
    if not isinstance(timestamp, int | float):
        return "-"
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%H:%M:%S")


def dump_line(event: dict[str, Any]) -> str:
    fields = {
        k: v
        for k, v in event.items()
        if k not in ("type", "hostname", "timestamp", "local_received", "utcoffset", "pid", "clock")
    }
    extra = ", ".join(f"{k}={v!r}" for k, v in fields.items())
    return f"{_when(event.get('timestamp'))} [{event.get('hostname')}] {event.get('type')}: {extra}"


def draw(state: Any) -> str:
    lines = ["Workers:", f"  {'node':<40} {'status':<8} {'active':>6} {'processed':>9}"]
    for worker in sorted(state.workers.values(), key=lambda w: w.hostname):
        status = "online" if worker.alive else "offline"
        active, processed = worker.active or 0, worker.processed or 0
        lines.append(f"  {worker.hostname:<40} {status:<8} {active:>6} {processed:>9}")
    lines += ["", "Tasks:", f"  {'uuid':<36} {'name':<30} {'state':<9} {'worker':<30}"]
    recent = list(state.tasks.values())[-SHOWN_TASKS:]
    for task in reversed(recent):
        lines.append(
            f"  {task.uuid:<36} {(task.name or '?')[:30]:<30} {task.state:<9} "
            f"{(task.hostname or '-')[:30]:<30}"
        )
    return "\n".join(lines)


@cli.command()
@click.option("-d", "--dump", is_flag=True, help="Print every event as it comes.")
@click.option("-j", "--json", "as_json", is_flag=True, help="With --dump: one JSON object a line.")
@click.option(
    "--timeout", type=float, default=None, help="Stop after this many seconds (default: never)."
)
@click.option("--limit", type=int, default=None, help="Stop after this many events.")
@click.pass_obj
def events(
    ctx: AppContext, /, dump: bool, as_json: bool, timeout: float | None, limit: int | None
) -> None:
    """Watch events: a live table of workers and tasks, or --dump every event."""
    app = ctx.app
    receiver = app.events.Receiver(handlers={})
    state = app.events.State()
    drawn = 0.0
    try:
        for event in receiver.itercapture(limit=limit, timeout=timeout):
            if dump:
                click.echo(json.dumps(event, default=repr) if as_json else dump_line(event))
                continue
            state.event(event)
            now = time.monotonic()
            if now - drawn >= 1.0:
                drawn = now
                click.clear()
                click.echo(draw(state))
    except KeyboardInterrupt:
        pass
    if not dump:
        click.echo(draw(state))
