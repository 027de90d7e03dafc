"""Time limits around one task run, per kind of pool.

- Prefork child: the soft limit is a `SIGALRM` raising `SoftTimeLimitExceeded` in the
  task; the hard limit is a deadline in the slot table (monotonic seconds), enforced by
  the supervisor, which kills the child.
- Solo: `SIGALRM` raises `SoftTimeLimitExceeded`, then `TimeLimitExceeded` at the hard
  limit (the process cannot be killed from outside without killing the worker).
- Threads: a timer raises the exception asynchronously in the task's thread; it lands
  at the next Python bytecode, so a task blocked in C code notices only when it returns.
"""

from __future__ import annotations

import ctypes
import signal
import threading
import time
from typing import TYPE_CHECKING

from celeriac.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

if TYPE_CHECKING:
    from types import FrameType

    from celeriac.worker.admit import Request
    from celeriac.worker.slots import SlotTable

__all__ = ["AlarmTimeLimits", "SlotTimeLimits", "ThreadTimeLimits", "install_alarm_handler"]


class _AlarmState:
    hard_after_soft: float | None = None
    limit: float | None = None


_alarm = _AlarmState()


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    if _alarm.hard_after_soft is not None:
        remaining = _alarm.hard_after_soft
        _alarm.hard_after_soft = None
        if remaining > 0:
            signal.setitimer(signal.ITIMER_REAL, remaining)
            raise SoftTimeLimitExceeded(f"soft time limit ({_alarm.limit}s) exceeded")
        raise TimeLimitExceeded(_alarm.limit)
    raise SoftTimeLimitExceeded(f"soft time limit ({_alarm.limit}s) exceeded")


def install_alarm_handler() -> None:
    """Route SIGALRM to the soft-limit handler (main thread only)."""
    signal.signal(signal.SIGALRM, _on_alarm)


class SlotTimeLimits:
    """Prefork child: soft limit by alarm, hard limit by the supervisor."""

    def __init__(self, slots: SlotTable, index: int) -> None:
        self.slots = slots
        self.index = index

    def arm(self, request: Request) -> None:
        # Monotonic (CLOCK_MONOTONIC, shared by every process of the host): a step of
        # the wall clock neither kills a task early nor lets one run past its limit.
        now = time.monotonic()
        deadline = now + request.time_limit if request.time_limit else None
        self.slots.start(
            self.index,
            tag=request.delivery.tag,
            task_id=request.id,
            name=request.name,
            started=now,
            deadline=deadline,
        )
        if request.soft_time_limit:
            _alarm.hard_after_soft = None
            _alarm.limit = request.soft_time_limit
            signal.setitimer(signal.ITIMER_REAL, request.soft_time_limit)

    def disarm(self, request: Request) -> None:
        if request.soft_time_limit:
            signal.setitimer(signal.ITIMER_REAL, 0)
        self.slots.clear(self.index)
        self.slots.count_done(self.index)


class AlarmTimeLimits:
    """Solo pool: both limits raise inside the task."""

    def arm(self, request: Request) -> None:
        soft, hard = request.soft_time_limit, request.time_limit
        if soft:
            _alarm.limit = soft
            _alarm.hard_after_soft = (hard - soft) if hard else None
            signal.setitimer(signal.ITIMER_REAL, soft)
        elif hard:
            _alarm.limit = hard
            _alarm.hard_after_soft = 0.0
            signal.setitimer(signal.ITIMER_REAL, hard)

    def disarm(self, request: Request) -> None:
        if request.soft_time_limit or request.time_limit:
            signal.setitimer(signal.ITIMER_REAL, 0)
            _alarm.hard_after_soft = None


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> None:
    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    set_async_exc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


class ThreadTimeLimits:
    """Threads pool: timers raise asynchronously in the task's thread."""

    def __init__(self) -> None:
        self._timers: dict[int, list[threading.Timer]] = {}
        self._lock = threading.Lock()

    def arm(self, request: Request) -> None:
        ident = threading.get_ident()
        timers: list[threading.Timer] = []
        if request.soft_time_limit:
            timers.append(
                threading.Timer(
                    request.soft_time_limit, _raise_in_thread, (ident, SoftTimeLimitExceeded)
                )
            )
        if request.time_limit:
            timers.append(
                threading.Timer(request.time_limit, _raise_in_thread, (ident, TimeLimitExceeded))
            )
        for timer in timers:
            timer.daemon = True
            timer.start()
        with self._lock:
            self._timers[ident] = timers

    def disarm(self, request: Request) -> None:
        with self._lock:
            timers = self._timers.pop(threading.get_ident(), [])
        for timer in timers:
            timer.cancel()
