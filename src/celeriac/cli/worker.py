"""`celeriac -A tasks worker`: start a worker."""

from __future__ import annotations

import sys
from typing import Any

import click

from celeriac.cli import EX_CONFIG, EX_UNAVAILABLE, AppContext, cli, fail
from celeriac.exceptions import ImproperlyConfigured

__all__ = ["worker"]


@cli.command()
@click.option(
    "-l",
    "--loglevel",
    default="WARNING",
    show_default=True,
    help="DEBUG, INFO, WARNING, ERROR or CRITICAL.",
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
    type=click.Choice(["prefork", "threads", "solo", "asyncio"]),
    default=None,
    help="Execution pool (default: prefork).",
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
        options = WorkerOptions.resolve(app, **params)
        code = Worker(app, options).start()
    except ImproperlyConfigured as exc:
        fail(str(exc), EX_CONFIG)
    except WorkerStartError as exc:
        fail(str(exc), EX_UNAVAILABLE)
    sys.exit(code)
