"""`celeriac -A tasks control <command> ...`: change what workers (celeriac or Celery) do.

Thin over `app.control`: `revoke <id>...`, `terminate <signal> <id>...`,
`rate_limit <task> <rate>`, `time_limit <task> <soft> [hard]`, `shutdown`,
`enable_events`, `disable_events`, `heartbeat`, `add_consumer <queue>`,
`cancel_consumer <queue>`, `pool_grow [n]`, `pool_shrink [n]`, `autoscale <max> <min>`.
`revoke` records the revocation for celeriac workers too (see `app.control.revoke`).
Exit code 69 when no worker answered within `--timeout`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from celeriac.cli import EX_USAGE, AppContext, cli, fail
from celeriac.cli.replies import addressing_options, destination_list, merge, print_replies

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["control"]

# command -> (usage of its arguments, smallest and largest argument count)
COMMANDS: dict[str, tuple[str, int, int]] = {
    "revoke": ("<task id>...", 1, 10_000),
    "terminate": ("<signal> <task id>...", 2, 10_000),
    "rate_limit": ("<task name> <rate, e.g. 10/m>", 2, 2),
    "time_limit": ("<task name> <soft seconds> [<hard seconds>]", 2, 3),
    "shutdown": ("", 0, 0),
    "enable_events": ("", 0, 0),
    "disable_events": ("", 0, 0),
    "heartbeat": ("", 0, 0),
    "add_consumer": ("<queue>", 1, 1),
    "cancel_consumer": ("<queue>", 1, 1),
    "pool_grow": ("[n]", 0, 1),
    "pool_shrink": ("[n]", 0, 1),
    "autoscale": ("<max> <min>", 2, 2),
}


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        fail(f"{what} must be a number, got {text!r}", EX_USAGE)


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        fail(f"{what} must be a whole number, got {text!r}", EX_USAGE)


def _call(control: Any, command: str, args: tuple[str, ...], **options: Any) -> Any:
    calls: dict[str, Callable[[], Any]] = {
        "revoke": lambda: control.revoke(list(args), **options),
        "terminate": lambda: control.terminate(list(args[1:]), signal=args[0], **options),
        "rate_limit": lambda: control.rate_limit(
            args[0], None if args[1] in ("0", "") else args[1], **options
        ),
        "time_limit": lambda: control.time_limit(
            args[0],
            soft=_number(args[1], "soft"),
            hard=_number(args[2], "hard") if len(args) > 2 else None,
            **options,
        ),
        "shutdown": lambda: control.shutdown(**options),
        "enable_events": lambda: control.enable_events(**options),
        "disable_events": lambda: control.disable_events(**options),
        "heartbeat": lambda: control.heartbeat(**options),
        "add_consumer": lambda: control.add_consumer(args[0], **options),
        "cancel_consumer": lambda: control.cancel_consumer(args[0], **options),
        "pool_grow": lambda: control.pool_grow(_int(args[0], "n") if args else 1, **options),
        "pool_shrink": lambda: control.pool_shrink(_int(args[0], "n") if args else 1, **options),
        "autoscale": lambda: control.autoscale(
            _int(args[0], "max"), _int(args[1], "min"), **options
        ),
    }
    return calls[command]()


@cli.command(
    epilog="Commands:\n\n\b\n"
    + "\n".join(f"  {name} {usage}" for name, (usage, _, _) in COMMANDS.items())
)
@click.argument("command", type=click.Choice(sorted(COMMANDS)))
@click.argument("arguments", nargs=-1)
@addressing_options
@click.pass_obj
def control(
    ctx: AppContext,
    /,
    command: str,
    arguments: tuple[str, ...],
    timeout: float,
    destination: str | None,
    as_json: bool,
) -> None:
    """Tell workers to change: `celeriac -A tasks control revoke <id>`."""
    usage, least, most = COMMANDS[command]
    if not least <= len(arguments) <= most:
        fail(f"usage: control {command} {usage}".rstrip(), EX_USAGE)
    # `shutdown` is never answered (the worker just leaves), as with Celery.
    wants_reply = command != "shutdown"
    replies = _call(
        ctx.app.control,
        command,
        arguments,
        reply=wants_reply,
        timeout=timeout,
        destination=destination_list(destination),
    )
    if not wants_reply:
        click.echo("shutdown sent")
        return
    print_replies(merge(replies), as_json=as_json)
