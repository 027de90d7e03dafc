"""Celery options celeriac does not take: refused with one line naming the option and
the closest thing celeriac has, instead of click's usage text.

`CompatCommand` and `CompatGroup` catch click's "no such option" for the command they
parse: an option of Celery's listed in `UNSUPPORTED` gets its advice; any other unknown
option gets "did you mean" with the nearest option the command has. Both exit 64.
"""

from __future__ import annotations

import difflib
from typing import Any, NoReturn

import click

__all__ = ["UNSUPPORTED", "CompatCommand", "CompatGroup", "UnsupportedOption"]

# Celery 5.7 options celeriac refuses, each with the closest supported way. Keyed by
# command (None: the global options), then by every spelling of the option.
UNSUPPORTED: dict[str | None, dict[str, str]] = {
    None: {
        "--loader": "celeriac has no loaders: configure the app in code (app.config_from_object)",
        "--config": "use app.config_from_object('module') in the app module",
        "-q": "use -l error on the worker for less output",
        "--quiet": "use -l error on the worker for less output",
        "--skip-checks": "celeriac runs no Django system checks at start; drop the option",
    },
    "worker": {
        "-S": "revoked task ids are kept on the broker, shared by every worker: drop -S",
        "--statedb": "revoked task ids are kept on the broker, shared by every worker: "
        "drop --statedb",
        "--executable": "start the worker with that interpreter instead: "
        "/path/to/python -m celeriac worker",
    },
}


class UnsupportedOption(click.ClickException):
    """One line, exit 64 (a usage error)."""

    exit_code = 64

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True, file=file)


def _known(command: click.Command) -> list[str]:
    names: list[str] = []
    for param in command.params:
        if isinstance(param, click.Option):
            names += [*param.opts, *param.secondary_opts]
    return names


def _refuse(command: click.Command, key: str | None, exc: click.NoSuchOption) -> NoReturn:
    name = exc.option_name
    advice = UNSUPPORTED.get(key, {}).get(name)
    where = f"celeriac {key}" if key else "celeriac"
    if advice is not None:
        raise UnsupportedOption(f"{name} is a Celery option {where} does not support: {advice}")
    close = difflib.get_close_matches(name, _known(command), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UnsupportedOption(f"no such option for {where}: {name}{hint}; see {where} --help")


class CompatCommand(click.Command):
    """A command that refuses Celery-only options with advice (see the module doc)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            _refuse(self, self.name, exc)


class CompatGroup(click.Group):
    """The `celeriac` group, refusing Celery-only global options the same way; its
    commands are `CompatCommand`s."""

    command_class = CompatCommand

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            _refuse(self, None, exc)
