"""`celeriac -A tasks result <task id>`: print a task's result (waiting for it)."""

from __future__ import annotations

import json

import click

from celeriac import states
from celeriac.cli import EX_SOFTWARE, EX_UNAVAILABLE, AppContext, cli, fail
from celeriac.exceptions import ResultTimeout

__all__ = ["result"]


@cli.command()
@click.argument("task_id")
@click.option("-t", "--task", "task_name", default=None, help="The task's name (shown only).")
@click.option(
    "--traceback", "show_traceback", is_flag=True, help="Print the traceback of a failure."
)
@click.option(
    "--timeout", type=float, default=None, help="Seconds to wait for it (default: forever)."
)
@click.option("-j", "--json", "as_json", is_flag=True, help="Print state and result as JSON.")
@click.pass_obj
def result(
    ctx: AppContext,
    /,
    task_id: str,
    task_name: str | None,
    show_traceback: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Wait for a task and print its result; a failure exits 70 with its error."""
    outcome = ctx.app.AsyncResult(task_id)
    try:
        outcome.get(timeout=timeout, propagate=False, disable_sync_subtasks=False)
    except ResultTimeout:
        fail(
            f"task {task_id} is not ready after {timeout} s (state {outcome.state})", EX_UNAVAILABLE
        )
    state = outcome.state
    value = outcome.result
    if as_json:
        click.echo(
            json.dumps(
                {
                    "task_id": task_id,
                    "state": state,
                    "result": value if state == states.SUCCESS else repr(value),
                    "traceback": outcome.traceback,
                },
                default=repr,
            )
        )
    elif show_traceback and outcome.traceback:
        click.echo(outcome.traceback.rstrip())
    elif state == states.SUCCESS:
        click.echo(value if isinstance(value, str) else repr(value))
    else:
        click.echo(f"{state}: {value!r}")
    if state != states.SUCCESS:
        raise SystemExit(EX_SOFTWARE)
