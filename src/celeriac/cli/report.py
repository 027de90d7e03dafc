"""`celeriac -A tasks report`: versions, platform and settings, for bug reports."""

from __future__ import annotations

import platform
import sys

import click

from celeriac._version import __version__
from celeriac.cli import AppContext, cli

__all__ = ["report"]


@cli.command()
@click.pass_obj
def report(ctx: AppContext, /) -> None:
    """Print versions, platform and the app's changed settings (secrets hidden)."""
    app = ctx.app
    click.echo(
        f"software -> celeriac:{__version__} python:{platform.python_version()}\n"
        f"platform -> system:{platform.system()} arch:{platform.machine()} "
        f"imp:{platform.python_implementation()}\n"
        f"loader   -> {app.main or '__main__'}\n"
        f"executable -> {sys.executable}\n\n"
        f"{app.conf.humanize()}"
    )
