"""`celeriac -A tasks call <task name> --args '[2, 2]'`: send a task by name.

Prints the new task's id; with `--wait`, waits for it and prints the result instead.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from celeriac.cli import EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE, AppContext, cli, fail
from celeriac.exceptions import ResultTimeout

__all__ = ["call"]


def _json_arg(text: str | None, what: str, kind: type) -> Any:
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except ValueError as exc:
        fail(f"{what} is not JSON: {exc} (got {text!r})", EX_USAGE)
    if not isinstance(value, kind):
        fail(
            f"{what} must be a JSON {'list' if kind is list else 'object'}, got {text!r}", EX_USAGE
        )
    return value


@cli.command()
@click.argument("name")
@click.option("-a", "--args", "args_text", default=None, help="Positional arguments, a JSON list.")
@click.option(
    "-k", "--kwargs", "kwargs_text", default=None, help="Keyword arguments, a JSON object."
)
@click.option("--eta", default=None, help="When to run it: an ISO 8601 date and time.")
@click.option("--countdown", type=float, default=None, help="Run it in this many seconds.")
@click.option("--expires", type=float, default=None, help="Drop it if not started within N s.")
@click.option("--serializer", default=None, help="json (default), msgpack or pickle.")
@click.option("--queue", default=None, help="The queue to send it to.")
@click.option("--exchange", default=None, help="The exchange to send it to.")
@click.option("--routing-key", default=None, help="The routing key to use.")
@click.option("--priority", type=int, default=None, help="Its priority (0-9).")
@click.option(
    "--wait",
    "wait",
    type=float,
    default=None,
    is_flag=False,
    flag_value=-1.0,
    help="Wait for the result (up to N seconds; without N, forever) and print it.",
)
@click.pass_obj
def call(
    ctx: AppContext,
    /,
    name: str,
    args_text: str | None,
    kwargs_text: str | None,
    eta: str | None,
    countdown: float | None,
    expires: float | None,
    serializer: str | None,
    queue: str | None,
    exchange: str | None,
    routing_key: str | None,
    priority: int | None,
    wait: float | None,
) -> None:
    """Send task NAME; print its id (or, with --wait, its result)."""
    args = _json_arg(args_text, "--args", list)
    kwargs = _json_arg(kwargs_text, "--kwargs", dict)
    options: dict[str, Any] = {
        key: value
        for key, value in {
            "countdown": countdown,
            "expires": expires,
            "serializer": serializer,
            "queue": queue,
            "exchange": exchange,
            "routing_key": routing_key,
            "priority": priority,
        }.items()
        if value is not None
    }
    if eta is not None:
        try:
            options["eta"] = datetime.fromisoformat(eta)
        except ValueError:
            fail(f"--eta must be an ISO 8601 date and time, got {eta!r}", EX_USAGE)
    sent = ctx.app.send_task(name, args, kwargs, **options)
    if wait is None:
        click.echo(sent.id)
        return
    try:
        value = sent.get(timeout=None if wait < 0 else wait, propagate=False)
    except ResultTimeout:
        fail(f"task {sent.id} is not ready after {wait} s (state {sent.state})", EX_UNAVAILABLE)
    if sent.successful():
        click.echo(value if isinstance(value, str) else json.dumps(value, default=repr))
        return
    click.echo(f"{sent.state}: {sent.result!r}", err=True)
    raise SystemExit(EX_SOFTWARE)
