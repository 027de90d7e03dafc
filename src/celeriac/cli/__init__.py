"""The `celeriac` command: `celeriac -A tasks worker`, `celeriac -A tasks dlq list`, ...

`-A MODULE[:APP]` adds the current directory to `sys.path` (like Celery) and finds the
app: the named attribute, else `app` or `celery`, else the only Celeriac instance in the
module. Failures print one line and exit with a named, non-zero code.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any, NoReturn

import click

from celeriac._version import __version__
from celeriac.cli.compat import CompatGroup
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac

__all__ = [
    "EX_CANTCREAT",
    "EX_CONFIG",
    "EX_OK",
    "EX_SOFTWARE",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "change_directory",
    "load_app",
    "main",
    "use_broker",
]

# Exit codes (BSD sysexits, as Celery uses).
EX_OK = 0
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_CANTCREAT = 73
EX_SOFTWARE = 70
EX_CONFIG = 78


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def load_app(spec: str) -> Celeriac:
    """Import `MODULE[:APP]` and return the app it names.

    Raises:
        click.UsageError: never; failures exit with one line (see `fail`).
    """
    from celeriac.app.base import Celeriac

    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            fail(
                f"cannot import module {module_name!r}: no such module (is it in the "
                f"current directory {cwd} or installed?)",
                EX_USAGE,
            )
        fail(_import_failure(module_name, exc), EX_SOFTWARE)
    except ImproperlyConfigured as exc:
        # A setting refused while the module configured its app: a configuration error.
        fail(f"{exc} (while importing {module_name!r}{_where(exc)})", EX_CONFIG)
    except Exception as exc:  # isolation boundary: the user's module failed to import
        fail(_import_failure(module_name, exc), EX_SOFTWARE)
    if attribute:
        app: Any = module
        for part in attribute.split("."):
            app = getattr(app, part, None)
        if not isinstance(app, Celeriac):
            fail(f"module {module_name!r} has no Celeriac app named {attribute!r}", EX_USAGE)
        return app
    for name in ("app", "celery"):
        candidate = getattr(module, name, None)
        if isinstance(candidate, Celeriac):
            return candidate
    found = [v for v in vars(module).values() if isinstance(v, Celeriac)]
    if len(found) == 1:
        return found[0]
    fail(
        f"module {module_name!r} has no Celeriac app: name it `app`, or pass "
        f"-A {module_name}:<name>",
        EX_USAGE,
    )


def _import_failure(module_name: str, exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        where = f" ({last.filename}:{last.lineno})"
    return f"importing {module_name!r} failed: {type(exc).__name__}: {exc}{where}"


def _where(exc: BaseException) -> str:
    """`, at FILE:LINE` of the last frame outside celeriac (the user's line)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(package)
    ]
    return f", at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


class AppContext:
    def __init__(self, spec: str | None) -> None:
        self.spec = spec
        self._app: Celeriac | None = None

    @property
    def app(self) -> Celeriac:
        if self._app is None:
            if not self.spec:
                fail("no app given: pass -A MODULE (for example -A tasks)", EX_USAGE)
            self._app = load_app(self.spec)
        return self._app


def use_broker(url: str | None, result_backend: str | None = None) -> None:
    """`-b`/`--result-backend`: override the app's URLs (Celery's way: through the
    environment, so every process the command starts sees them too)."""
    if url:
        os.environ["CELERIAC_BROKER_URL"] = url
    if result_backend:
        os.environ["CELERIAC_RESULT_BACKEND"] = result_backend


def change_directory(workdir: str | None) -> None:
    """`--workdir`: run from this directory (before the app is imported)."""
    if workdir:
        try:
            os.chdir(workdir)
        except OSError as exc:
            fail(f"cannot change to --workdir {workdir}: {exc.strerror}", EX_CONFIG)


@click.group(
    cls=CompatGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "-A",
    "--app",
    "app_spec",
    metavar="MODULE[:APP]",
    envvar="CELERIAC_APP",
    help="The module defining the app (and its tasks).",
)
@click.option("-b", "--broker", default=None, help="Broker URL (overrides the app's).")
@click.option("--result-backend", default=None, help="Result backend URL (overrides the app's).")
@click.option("--workdir", default=None, help="Change to this directory before importing the app.")
@click.option(
    "-C",
    "--no-color",
    is_flag=True,
    default=False,
    help="Accepted, no effect: celeriac prints no colour.",
)
@click.version_option(__version__, prog_name="celeriac")
@click.pass_context
def cli(
    ctx: click.Context,
    app_spec: str | None,
    broker: str | None,
    result_backend: str | None,
    workdir: str | None,
    no_color: bool,
) -> None:
    """celeriac: a distributed task queue with Celery's API."""
    change_directory(workdir)
    use_broker(broker, result_backend)
    ctx.obj = AppContext(app_spec)


def load_commands() -> click.Group:
    """The `celeriac` group with every subcommand registered (importing a command's
    module registers it)."""
    from celeriac.cli import (  # noqa: F401
        beat,
        call,
        control,
        dashboard,
        dlq,
        events,
        inspect,
        listing,
        purge,
        report,
        result,
        status,
        worker,
    )

    return cli


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `celeriac` console script."""
    load_commands()
    try:
        cli.main(args=argv, prog_name="celeriac", standalone_mode=False)
    except click.UsageError as exc:
        # A bad option or value is a usage error: exit 64 (sysexits), not click's 2.
        exc.show()
        sys.exit(EX_USAGE)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
