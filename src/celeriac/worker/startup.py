"""`Worker`: start-up checks, the banner, and the chosen pool.

Start-up fails fast with one clear line when the broker does not answer, so a
misconfigured deployment is visible at once instead of as a silent, idle worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from celeriac import signals
from celeriac._version import __version__
from celeriac.app.queues import parse_queues
from celeriac.exceptions import BrokerError, CeleriacError, ImproperlyConfigured
from celeriac.worker.control import start_remote
from celeriac.worker.daemon import root_warning
from celeriac.worker.logs import configure_logging
from celeriac.worker.options import expand_logfile
from celeriac.worker.pools.aio import AsyncioPool
from celeriac.worker.pools.gevent import GeventPool
from celeriac.worker.pools.prefork import PreforkPool
from celeriac.worker.pools.solo import SoloPool
from celeriac.worker.pools.threads import ThreadsPool
from celeriac.worker.sdnotify import notify

if TYPE_CHECKING:
    from collections.abc import Callable

    from celeriac.app.base import Celeriac
    from celeriac.beat.service import EmbeddedBeat
    from celeriac.worker.options import WorkerOptions
    from celeriac.worker.pools.base import Pool

__all__ = ["POOLS", "Worker", "WorkerStartError"]

logger = logging.getLogger("celeriac.worker")

POOLS: dict[str, type[Pool]] = {
    "prefork": PreforkPool,
    "threads": ThreadsPool,
    "solo": SoloPool,
    "asyncio": AsyncioPool,
    "gevent": GeventPool,
}


class WorkerStartError(CeleriacError):
    """The worker cannot start (broker unreachable, bad configuration)."""


class Worker:
    """Runs `app`'s tasks with the pool and options given."""

    def __init__(
        self,
        app: Celeriac,
        options: WorkerOptions,
        *,
        beat: bool = False,
        notes: tuple[str, ...] = (),
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.options = options
        self.beat = beat
        # Info lines for the log once it is set up (options accepted as no-ops).
        self.notes = notes
        self.on_ready = on_ready

    def check_broker(self) -> list[str]:
        """Connect once, declare the queues; return warnings worth printing.

        Raises:
            WorkerStartError: the broker does not answer.
        """
        broker = self.app.create_broker(consumer_id=f"{self.options.hostname}:check")
        try:
            broker.connect()
            specs = parse_queues(self.app.conf.task_queues)
            for queue in self.options.queues:
                spec = specs.get(queue)
                if spec is not None and spec.exchange:
                    broker.declare_binding(
                        queue, exchange=spec.exchange, routing_key=spec.routing_key
                    )
                else:
                    broker.declare(queue)
            return broker.startup_warnings()
        except BrokerError as exc:
            raise WorkerStartError(
                f"cannot reach the broker at {broker.safe_url()}: {exc}"
            ) from exc
        finally:
            with contextlib.suppress(BrokerError):
                broker.close()

    def banner(self, pool: Pool) -> str:
        app, options = self.app, self.options
        tasks = "\n".join(f"  . {name}" for name in app.tasks.user_tasks()) or "  (none)"
        broker = app.create_broker().safe_url()
        if not app.conf.broker_url_resolved():
            broker += "  (the default: no broker_url set)"
        return (
            f"celeriac {__version__} on {options.hostname} (pid {os.getpid()})\n"
            f"  app:          {app.main or '__main__'}\n"
            f"  broker:       {broker}\n"
            f"  results:      {_redact(app.result_backend_url)}\n"
            f"  pool:         {pool.name} ({_concurrency(options)})\n"
            f"  prefetch:     {options.prefetch_multiplier} per slot"
            f"{'  (-O fair)' if options.optimization == 'fair' else ''}\n"
            f"  queues:       {', '.join(options.queues)}\n"
            f"[tasks]\n{tasks}\n"
        )

    def start(self) -> int:
        """Check, print the banner, run the pool; return the exit code."""
        logfile = self.options.logfile
        try:
            configure_logging(
                self.app,
                loglevel=self.options.loglevel,
                logfile=expand_logfile(logfile, self.options.hostname) if logfile else None,
            )
        except OSError as exc:
            raise ImproperlyConfigured(f"cannot open the log file: {exc}") from exc
        pidfile = None
        if self.options.pidfile:
            from celeriac.worker.pidfile import PidFile

            pidfile = PidFile(expand_logfile(self.options.pidfile, self.options.hostname))
            pidfile.acquire()
        try:
            return self._start()
        finally:
            if pidfile is not None:
                pidfile.release()

    def _start(self) -> int:
        for note in self.notes:
            logger.info(note)
        self.app.finalize()
        signals.worker_init.send(sender=self)
        self._check_signing()
        self._apply_limits()
        warnings = self.check_broker()
        if self.options.purge:
            self._purge()
        pool = POOLS[self.options.pool](self.app, self.options)
        print(self.banner(pool), file=sys.stderr, flush=True)
        root = root_warning()
        if root is not None:
            warnings.append(root)
        for warning in warnings:
            logger.warning(warning)
        if self.options.soft_time_limit and not pool.supports_soft_time_limit:
            logger.warning("the %s pool cannot interrupt a task at its soft time limit", pool.name)
        if self.options.pool == "threads" and (
            self.options.soft_time_limit or self.options.time_limit
        ):
            logger.warning(
                "on the threads pool, time limits interrupt a task only when it "
                "runs Python code (not while blocked in C code)"
            )
        embedded = self._start_beat() if self.beat else None
        remote = start_remote(self.app, self.options, pool)
        # Once it says ready, a service manager may stop it at any moment: a SIGTERM that
        # comes before the pool installs its own handlers asks for the same warm shutdown,
        # instead of killing the process.
        signal.signal(signal.SIGTERM, lambda signum, frame: pool.request_shutdown())
        logger.info("celeriac worker %s ready", self.options.hostname)
        signals.worker_ready.send(sender=self)
        notify("READY=1", f"STATUS=ready: {self.options.hostname}")
        if self.on_ready is not None:
            self.on_ready()
        try:
            return pool.run()
        finally:
            notify("STOPPING=1")
            if embedded is not None:
                embedded.stop()
            if remote is not None:
                remote.stop()
            signals.worker_shutdown.send(sender=self)

    def _purge(self) -> None:
        """`--purge`: empty this worker's queues before consuming (Celery's line)."""
        broker = self.app.create_broker(consumer_id=f"{self.options.hostname}:purge")
        try:
            count = sum(broker.purge(queue) for queue in self.options.queues)
        except BrokerError as exc:
            raise WorkerStartError(
                f"cannot purge the queues at {broker.safe_url()}: {exc}"
            ) from exc
        finally:
            with contextlib.suppress(BrokerError):
                broker.close()
        if count:
            messages = "message" if count == 1 else "messages"
            print(f"purge: Erased {count} {messages} from the queue.\n", flush=True)

    def _start_beat(self) -> EmbeddedBeat:
        """`-B`: beat as a thread of this (supervisor) process."""
        from celeriac.beat.service import EmbeddedBeat, make_scheduler

        scheduler = make_scheduler(self.app)
        scheduler.load_entries()  # a malformed entry stops the worker at start, named
        logger.info(
            "beat embedded: schedule %s in %s", scheduler.schedule_name, scheduler.store.where
        )
        return EmbeddedBeat(scheduler).start()

    def _check_signing(self) -> None:
        from celeriac.protocol.signing import is_set_up

        conf = self.app.conf
        if ("auth" in conf.accept_content or conf.task_serializer == "auth") and not is_set_up():
            raise WorkerStartError(
                "accept_content or task_serializer names 'auth' but app.setup_security() "
                "was not called: every signed task would be dead-lettered"
            )

    def _apply_limits(self) -> None:
        conf = self.app.conf
        if self.options.time_limit is not None:
            conf.task_time_limit = self.options.time_limit
        if self.options.soft_time_limit is not None:
            conf.task_soft_time_limit = self.options.soft_time_limit


def _concurrency(options: WorkerOptions) -> str:
    if options.autoscale is not None:
        high, low = options.autoscale
        return f"autoscale: min {low}, max {high}"
    return f"concurrency {options.concurrency}"


def _redact(url: str) -> str:
    from celeriac._urls import redact_url

    return redact_url(url)
