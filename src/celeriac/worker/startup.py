"""`Worker`: start-up checks, the banner, and the chosen pool.

Start-up fails fast with one clear line when the broker does not answer, so a
misconfigured deployment is visible at once instead of as a silent, idle worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import TYPE_CHECKING

from celeriac import signals
from celeriac._version import __version__
from celeriac.exceptions import BrokerError, CeleriacError
from celeriac.worker.control import start_remote
from celeriac.worker.pools.aio import AsyncioPool
from celeriac.worker.pools.prefork import PreforkPool
from celeriac.worker.pools.solo import SoloPool
from celeriac.worker.pools.threads import ThreadsPool

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.worker.options import WorkerOptions
    from celeriac.worker.pools.base import Pool

__all__ = ["POOLS", "Worker", "WorkerStartError"]

logger = logging.getLogger("celeriac.worker")

POOLS: dict[str, type[Pool]] = {
    "prefork": PreforkPool,
    "threads": ThreadsPool,
    "solo": SoloPool,
    "asyncio": AsyncioPool,
}

LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s %(process)d] %(message)s"


class WorkerStartError(CeleriacError):
    """The worker cannot start (broker unreachable, bad configuration)."""


def setup_logging(loglevel: str) -> None:
    level = getattr(logging, loglevel.upper(), None)
    if not isinstance(level, int):
        raise WorkerStartError(
            f"unknown log level {loglevel!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)


class Worker:
    """Runs `app`'s tasks with the pool and options given."""

    def __init__(self, app: Celeriac, options: WorkerOptions) -> None:
        self.app = app
        self.options = options

    def check_broker(self) -> list[str]:
        """Connect once, declare the queues; return warnings worth printing.

        Raises:
            WorkerStartError: the broker does not answer.
        """
        broker = self.app.create_broker(consumer_id=f"{self.options.hostname}:check")
        try:
            broker.connect()
            for queue in self.options.queues:
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
        return (
            f"celeriac {__version__} on {options.hostname} (pid {os.getpid()})\n"
            f"  app:          {app.main or '__main__'}\n"
            f"  broker:       {app.create_broker().safe_url()}\n"
            f"  results:      {_redact(app.result_backend_url)}\n"
            f"  pool:         {pool.name} (concurrency {options.concurrency})\n"
            f"  prefetch:     {options.prefetch_multiplier} per slot\n"
            f"  queues:       {', '.join(options.queues)}\n"
            f"[tasks]\n{tasks}\n"
        )

    def start(self) -> int:
        """Check, print the banner, run the pool; return the exit code."""
        setup_logging(self.options.loglevel)
        self.app.finalize()
        signals.worker_init.send(sender=self)
        self._apply_limits()
        warnings = self.check_broker()
        pool = POOLS[self.options.pool](self.app, self.options)
        print(self.banner(pool), file=sys.stderr, flush=True)
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
        remote = start_remote(self.app, self.options, pool)
        logger.info("celeriac worker %s ready", self.options.hostname)
        signals.worker_ready.send(sender=self)
        try:
            return pool.run()
        finally:
            if remote is not None:
                remote.stop()
            signals.worker_shutdown.send(sender=self)

    def _apply_limits(self) -> None:
        conf = self.app.conf
        if self.options.time_limit is not None:
            conf.task_time_limit = self.options.time_limit
        if self.options.soft_time_limit is not None:
            conf.task_soft_time_limit = self.options.soft_time_limit


def _redact(url: str) -> str:
    from celeriac._urls import redact_url

    return redact_url(url)
