"""What `inspect` and `control` share: the options that address workers, and printing
their replies the way `celery inspect` does (or as JSON for scripts).

No reply within `--timeout` is an error: one line on stderr and exit code 69
(EX_UNAVAILABLE), as Celery does, so `celeriac inspect ping` works as a liveness probe.
"""

from __future__ import annotations

import json
import pprint
from typing import TYPE_CHECKING, Any

import click

from celeriac.cli import EX_UNAVAILABLE, fail

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["addressing_options", "destination_list", "print_replies"]


def addressing_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`-t/--timeout`, `-d/--destination`, `-j/--json` (Celery's names)."""
    command = click.option(
        "-j", "--json", "as_json", is_flag=True, help="Print the replies as one JSON object."
    )(command)
    command = click.option(
        "-d",
        "--destination",
        default=None,
        help="Comma-separated node names to address (default: every worker).",
    )(command)
    command = click.option(
        "-t",
        "--timeout",
        type=float,
        default=1.0,
        show_default=True,
        help="Seconds to wait for replies.",
    )(command)
    return command


def destination_list(destination: str | None) -> list[str] | None:
    if not destination:
        return None
    return [name.strip() for name in destination.split(",") if name.strip()]


def _ok_text(value: Any) -> tuple[bool, str]:
    if isinstance(value, dict) and set(value) == {"ok"}:
        return True, str(value["ok"])
    if isinstance(value, dict) and set(value) == {"error"}:
        return False, str(value["error"])
    if value is None or value == [] or value == {}:
        return True, "- empty -"
    if isinstance(value, list):
        return True, "\n".join(f"* {item}" for item in value)
    return True, pprint.pformat(value, width=96)


def print_replies(replies: dict[str, Any] | None, *, as_json: bool, quiet: bool = False) -> None:
    """Print `{node: reply}`; exit 69 when nobody answered."""
    if not replies:
        fail("No nodes replied within time constraint", EX_UNAVAILABLE)
    if as_json:
        click.echo(json.dumps(replies, default=str, sort_keys=True))
        return
    if quiet:
        return
    errors = 0
    for node in sorted(replies):
        good, text = _ok_text(replies[node])
        errors += not good
        click.echo(f"->  {node}: {'OK' if good else 'ERROR'}")
        for line in text.splitlines() or [""]:
            click.echo(f"        {line}")
    count = len(replies)
    click.echo(f"\n{count} node{'s' if count != 1 else ''} online.")


def merge(replies: list[dict[str, Any]] | None) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for reply in replies or ():
        if isinstance(reply, dict):
            merged.update(reply)
    return merged
