"""`celeriac -A tasks worker`: start a worker.

The options are Celery's, with Celery's meaning; a Celery option celeriac does not take
is refused with one line (`celeriac.cli.compat`).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import TYPE_CHECKING, Any

import click

from celeriac.cli import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_SOFTWARE,
    EX_UNAVAILABLE,
    EX_USAGE,
    AppContext,
    change_directory,
    cli,
    fail,
    use_broker,
)
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Callable

    from celeriac.worker.daemon import Detached

__all__ = ["worker"]


def _check_level(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from celeriac.worker.logs import parse_level

    try:
        parse_level(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


class _Concurrency(click.ParamType[int | str]):
    """`-c N` or `-c auto` (Celery's)."""

    name = "integer|auto"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | str:
        if isinstance(value, int):
            return value
        if value == "auto":
            return "auto"
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is not a number or auto", param, ctx)


_CONCURRENCY = _Concurrency()


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
    help="Write the log to this file instead of stderr; %n, %h, %d, %p, %i and %I expand "
    "(%i: 0 in the supervisor, 1..N in prefork children, which then log to their own file).",
)
@click.option(
    "-c",
    "--concurrency",
    type=_CONCURRENCY,
    default=None,
    help="Tasks run at once (default: the number of CPUs); auto: the CPUs this process may "
    "use (prefork: within the cgroup CPU quota).",
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
    "--autoscale",
    default=None,
    metavar="MAX,MIN",
    help="Prefork: grow to MAX children under load, shrink back to MIN when idle.",
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
    "--events",
    is_flag=True,
    default=False,
    help="Send task events (for Flower and `celeriac events`).",
)
# -- Celery's daemonizing, queue and feature options -------------------------------------
@click.option(
    "-D",
    "--detach",
    is_flag=True,
    default=False,
    help="Run in the background; returns once the worker is ready (or failed at start).",
)
@click.option("--pidfile", default=None, help="Write the pid here, locked: one worker per file.")
@click.option("--uid", default=None, help="Drop privileges to this user (name or id).")
@click.option("--gid", default=None, help="Drop privileges to this group (name or id).")
@click.option("--umask", default=None, help="Create files with this umask (e.g. 022).")
@click.option("--workdir", default=None, help="Change to this directory first.")
@click.option("-b", "--broker", default=None, help="Broker URL (overrides the app's).")
@click.option(
    "-O",
    "--optimization",
    type=click.Choice(["default", "fair"]),
    default="default",
    help="fair: fetch no message beyond the free slots (prefetch multiplier 1).",
)
@click.option("--disable-prefetch", is_flag=True, default=False, help="The same as -O fair.")
@click.option("-X", "--exclude-queues", default=None, help="Comma-separated queues not to consume.")
@click.option("-I", "--include", default=None, help="Comma-separated modules to import.")
@click.option(
    "--purge",
    "--discard",
    is_flag=True,
    default=False,
    help="Delete the waiting messages of this worker's queues before starting.",
)
@click.option(
    "--without-gossip",
    is_flag=True,
    default=False,
    help="Accepted, no effect: celeriac workers do not gossip.",
)
@click.option(
    "--without-mingle",
    is_flag=True,
    default=False,
    help="Accepted, no effect: celeriac workers do not mingle at start.",
)
@click.option(
    "--heartbeat-interval",
    type=float,
    default=None,
    help="Seconds between worker-heartbeat events (default 2).",
)
@click.option(
    "-s",
    "--schedule-filename",
    "--schedule",
    default=None,
    help="With -B: the schedule's name (beat_schedule_filename).",
)
@click.option("--scheduler", default=None, help="With -B: scheduler class, 'module:Class'.")
@click.option(
    "--pool-start-method",
    default=None,
    help="fork (the only one: prefork children are forked).",
)
# -----------------------------------------------------------------------------------------
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve this worker's Prometheus metrics at /metrics on this port.",
)
@click.option(
    "--metrics-bind",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics endpoint listens on.",
)
@click.pass_obj
def worker(ctx: AppContext, /, **params: Any) -> None:
    """Start a worker: a supervisor and one child process per CPU by default."""
    setup = _process_setup(params)
    detached = None
    if params.pop("detach"):
        from celeriac.worker.daemon import detach

        detached = detach()
    try:
        sys.exit(_run(ctx, params, setup, detached))
    except SystemExit as exc:
        if detached is not None:
            detached.failed(exc.code if isinstance(exc.code, int) else 1)
        raise
    except BaseException:
        if detached is not None:
            traceback.print_exc()
            detached.failed(EX_SOFTWARE)
        raise


def _process_setup(params: dict[str, Any]) -> dict[str, Any]:
    """Apply what must precede the app import (directory, broker, umask); return the
    options that take effect later."""
    from celeriac.worker.daemon import parse_umask

    change_directory(params.pop("workdir"))
    use_broker(params.pop("broker"))
    umask = params.pop("umask")
    if umask is not None:
        try:
            os.umask(parse_umask(umask))
        except ImproperlyConfigured as exc:
            fail(str(exc), EX_CONFIG)
    start_method = params.pop("pool_start_method")
    if start_method not in (None, "fork"):
        fail(
            f"--pool-start-method {start_method} is not supported: prefork children are "
            "always forked (--pool-start-method fork, Celery's default)",
            EX_USAGE,
        )
    notes = []
    if params.pop("without_gossip"):
        notes.append("--without-gossip: celeriac workers do not gossip; nothing to turn off")
    if params.pop("without_mingle"):
        notes.append(
            "--without-mingle: celeriac workers do not mingle at start (revokes are read "
            "from the broker); nothing to turn off"
        )
    if params.pop("disable_prefetch"):
        params["optimization"] = "fair"
    return {
        "uid": params.pop("uid"),
        "gid": params.pop("gid"),
        "notes": tuple(notes),
        "include": params.pop("include"),
        "schedule": params.pop("schedule_filename"),
        "scheduler": params.pop("scheduler"),
    }


def _run(
    ctx: AppContext, params: dict[str, Any], setup: dict[str, Any], detached: Detached | None
) -> int:
    from celeriac.worker.daemon import drop_privileges
    from celeriac.worker.options import WorkerOptions, expand_logfile
    from celeriac.worker.pidfile import PidFileError
    from celeriac.worker.startup import Worker, WorkerStartError

    try:
        drop_privileges(uid=setup["uid"], gid=setup["gid"])
    except ImproperlyConfigured as exc:
        fail(str(exc), EX_CONFIG)
    metrics_port, metrics_bind = params.pop("metrics_port"), params.pop("metrics_bind")
    metrics = None
    if metrics_port is not None:
        from celeriac.metrics.worker import WorkerMetrics

        try:
            # Before the app is imported: the app may import prometheus_client too.
            metrics = WorkerMetrics.prepare()
        except ImproperlyConfigured as exc:
            fail(str(exc), EX_CONFIG)
    app = ctx.app
    for module in (setup["include"] or "").split(","):
        if module.strip():
            try:
                importlib.import_module(module.strip())
            except Exception as exc:  # isolation boundary: the user's module failed
                fail(f"-I {module.strip()}: {type(exc).__name__}: {exc}", EX_SOFTWARE)
    if params.pop("task_events"):
        app.conf.worker_send_task_events = True
    if setup["schedule"]:
        app.conf.beat_schedule_filename = setup["schedule"]
    if setup["scheduler"]:
        app.conf.beat_scheduler = setup["scheduler"]
    try:
        # The options above, by name: `resolve` fills what is unset from the settings.
        beat = params.pop("beat")
        options = WorkerOptions.resolve(app, **params)
        on_ready: Callable[[], None] | None = None
        if detached is not None:
            output = expand_logfile(options.logfile, options.hostname) if options.logfile else None

            def on_ready() -> None:
                detached.ready(output)

        worker = Worker(app, options, beat=beat, notes=setup["notes"], on_ready=on_ready)
        if metrics is not None:
            metrics.start(port=metrics_port, bind=metrics_bind)
        return worker.start()
    except ImproperlyConfigured as exc:
        fail(str(exc), EX_CONFIG)
    except PidFileError as exc:
        fail(str(exc), EX_CANTCREAT)
    except WorkerStartError as exc:
        fail(str(exc), EX_UNAVAILABLE)
    finally:
        if metrics is not None:
            metrics.close()
