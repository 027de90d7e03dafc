"""`celeriac -A tasks list bindings`: the queues the app knows and how they are bound."""

from __future__ import annotations

import click

from celeriac.cli import AppContext, cli
from celeriac.cli.purge import known_queues

__all__ = ["list_"]


@cli.group("list")
def list_() -> None:
    """List broker entities the app uses."""


@list_.command()
@click.pass_obj
def bindings(ctx: AppContext, /) -> None:
    """Queue, exchange and routing key of each of the app's queues."""
    rows = [("Queue", "Exchange", "Routing Key")]
    default_exchange = ctx.app.conf.task_default_exchange
    for queue in known_queues(ctx):
        rows.append((queue, str(default_exchange or queue), queue))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())
