"""Running beat in a process: `celeriac beat` in the foreground, or embedded in a
worker (`worker -B`) as a thread. Signals stop it cleanly: the lease is released so a
follower leads at once."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from celeriac._imports import import_object
from celeriac.beat.scheduler import Scheduler
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac

__all__ = ["EmbeddedBeat", "make_scheduler", "run_beat", "setup_logging"]

logger = logging.getLogger("celeriac.beat")

LOG_FORMAT = "[%(asctime)s: %(levelname)s/beat %(process)d] %(message)s"


def setup_logging(loglevel: str) -> None:
    """Log to stderr at `loglevel` (INFO shows each send).

    Raises:
        ImproperlyConfigured: not a log level.
    """
    level = getattr(logging, loglevel.upper(), None)
    if not isinstance(level, int):
        raise ImproperlyConfigured(
            f"unknown log level {loglevel!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)


def make_scheduler(
    app: Celeriac,
    *,
    scheduler: str | type[Scheduler] | None = None,
    schedule_name: str | None = None,
    max_interval: float | None = None,
) -> Scheduler:
    """The scheduler named by `scheduler` (or `beat_scheduler`), for `app`.

    Raises:
        ImproperlyConfigured: the name does not lead to a `Scheduler` subclass.
    """
    chosen: Any = scheduler or app.conf.beat_scheduler
    if isinstance(chosen, str):
        try:
            chosen = import_object(chosen)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"beat scheduler {chosen!r} cannot be imported ({exc}): write 'module:Class'"
            ) from exc
    if not (isinstance(chosen, type) and issubclass(chosen, Scheduler)):
        raise ImproperlyConfigured(
            f"beat scheduler {chosen!r} is not a celeriac.beat.Scheduler subclass "
            "(Celery's schedulers, such as django-celery-beat's, keep their own state and "
            "are not used by celeriac beat; see docs/periodic-tasks.md)"
        )
    made: Scheduler = chosen(app, schedule_name=schedule_name, max_interval=max_interval)
    return made


def run_beat(scheduler: Scheduler) -> int:
    """Run `scheduler` in this thread until SIGTERM or SIGINT; return the exit code."""
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        logger.info("beat: stopping (signal %d)", signum)
        stop.set()

    previous = {
        signum: signal.signal(signum, request_stop) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        scheduler.run(stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


class EmbeddedBeat:
    """Beat as a thread of a worker process (`worker -B`)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celeriac-beat", daemon=True)

    def _run(self) -> None:
        try:
            self.scheduler.run(self._stop)
        except Exception:  # isolation boundary: a beat failure must not go unseen
            logger.exception("embedded beat stopped")

    def start(self) -> EmbeddedBeat:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
