"""`celeriac -A tasks worker`: start a worker."""

from __future__ import annotations

import sys
from typing import Any

import click

from celeriac.cli import EX_CONFIG, EX_UNAVAILABLE, AppContext, cli, fail
from celeriac.exceptions import ImproperlyConfigured

__all__ = ["worker"]


def _check_level(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from celeriac.worker.logs import parse_level

    try:
        parse_level(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


@cli.command()
@click.option(
    "-l",
    "--loglevel",
    default="WARNING",
    show_default=True,
    callback=_check_level,
    help="DEBUG, INFO, WARNING, ERROR or CRITICAL (any case).",
)
@click.option(
    "-f",
    "--logfile",
    default=None,
    help="Write the log to this file instead of stderr.",
)
@click.option(
    "-c",
    "--concurrency",
    type=int,
    default=None,
    help="Tasks run at once (default: the number of CPUs).",
)
@click.option(
    "-P",
    "--pool",
    type=click.Choice(["prefork", "threads", "solo", "asyncio", "gevent", "eventlet"]),
    default=None,
    help="Execution pool (default: prefork); gevent patches the standard library first "
    "thing; eventlet is refused (deprecated upstream: use gevent).",
)
@click.option("-Q", "--queues", default=None, help="Comma-separated queues to consume.")
@click.option("-n", "--hostname", default=None, help="Node name (default: celeriac@%h).")
@click.option(
    "--prefetch-multiplier", type=int, default=None, help="Messages fetched ahead per slot."
)
@click.option(
    "--max-tasks-per-child", type=int, default=None, help="Replace a child after this many tasks."
)
@click.option(
    "--max-memory-per-child",
    type=int,
    default=None,
    help="Replace a child once its resident memory passes this many KiB.",
)
@click.option("--time-limit", type=float, default=None, help="Hard time limit (seconds).")
@click.option("--soft-time-limit", type=float, default=None, help="Soft time limit (seconds).")
@click.option(
    "--without-heartbeat", is_flag=True, default=False, help="Do not send worker heartbeats."
)
@click.option(
    "-B",
    "--beat",
    is_flag=True,
    default=False,
    help="Also run beat (periodic tasks) in this worker; safe on several workers: one leads.",
)
@click.option(
    "-E",
    "--task-events",
    is_flag=True,
    default=False,
    help="Send task events (for Flower and `celeriac events`).",
)
@click.pass_obj
def worker(ctx: AppContext, /, **params: Any) -> None:
    """Start a worker: a supervisor and one child process per CPU by default."""
    from celeriac.worker.options import WorkerOptions
    from celeriac.worker.startup import Worker, WorkerStartError

    app = ctx.app
    if params.pop("task_events"):
        app.conf.worker_send_task_events = True
    try:
        # The options above, by name: `resolve` fills what is unset from the settings.
        beat = params.pop("beat")
        options = WorkerOptions.resolve(app, **params)
        code = Worker(app, options, beat=beat).start()
    except ImproperlyConfigured as exc:
        fail(str(exc), EX_CONFIG)
    except WorkerStartError as exc:
        fail(str(exc), EX_UNAVAILABLE)
    sys.exit(code)
