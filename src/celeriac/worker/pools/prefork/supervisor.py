"""The prefork parent: keeps one consuming child per slot, runs no task itself.

- A child that dies is replaced within a second, and the messages it held go back to the
  queue at once (`Broker.recover`); the one it was running counts toward that message's
  redelivery cap, prefetched ones do not.
- A child past its hard time limit is killed; its task is recorded as
  `TimeLimitExceeded` before its message comes back, so the redelivered copy is not run
  again (the executor finds the stored failure and only propagates it).
- The number of children follows `PoolSize` (`autoscale.py`): `--autoscale` and the
  `pool_grow`/`pool_shrink`/`autoscale` commands change it, and a child beyond it is
  retired as in a warm shutdown (it gives back what it prefetched and finishes what runs).
- SIGTERM (or a first SIGINT) is a warm shutdown: children stop fetching, return what they
  prefetched at once, finish what runs, and the supervisor exits 0 once they are gone.
  A second SIGINT, or SIGQUIT, is a cold shutdown: children are killed and everything
  they held is returned to the queue at once.
- The main loop never waits on a server: revocations are read by a thread of their own
  (`RevocationFollower`), and what a dead child leaves to do with the broker and the
  result backend runs in order on another (`errands.py`). A backend or broker that hangs
  delays those, never the reaping, the hard time limits or the respawns.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac import signals, states
from celeriac._crashpoints import crash_point
from celeriac.exceptions import BackendError, TimeLimitExceeded
from celeriac.protocol.errors import encode_exception
from celeriac.worker.consumer import consumer_id_for
from celeriac.worker.holdings import Shutdown
from celeriac.worker.pools.prefork.autoscale import MAX_CHILDREN, SCALE_INTERVAL, PoolSize
from celeriac.worker.pools.prefork.backlog import BacklogGauge
from celeriac.worker.pools.prefork.child import STOP_SIGNALS, child_main
from celeriac.worker.pools.prefork.errands import Errands
from celeriac.worker.pools.prefork.forking import fork_between_imports
from celeriac.worker.pools.prefork.held import children_requests
from celeriac.worker.revocations import RevocationFollower, Revocations
from celeriac.worker.slots import RunningTask, SlotTable

if TYPE_CHECKING:
    from types import FrameType

    from celeriac.app.base import Celeriac
    from celeriac.backends.base import Revocation
    from celeriac.brokers.base import Broker
    from celeriac.worker.options import WorkerOptions

__all__ = ["Supervisor"]

logger = logging.getLogger("celeriac.worker")

# Supervisor loop tick: bounds how late a dead child or a passed deadline is noticed.
TICK = 0.05
# A child that dies sooner than this after starting is restarted with backoff.
FAST_FAILURE = 1.0
MAX_RESPAWN_DELAY = 10.0
# How often the supervisor looks for tasks revoked with terminate=True.
REVOCATION_CHECK = 0.5
# How long a stopping supervisor waits for its errands (returning the children's
# messages) before it exits anyway: what is left comes back when its lease lapses.
ERRANDS_GRACE = 10.0
# Tasks whose deaths this worker remembers when nothing shared can count them.
MAX_LOCAL_CRASHES = 10000


@dataclass(slots=True)
class _Child:
    pid: int
    started: float
    timed_out: RunningTask | None = None
    terminated: RunningTask | None = None


class Supervisor:
    """Spawns, watches and replaces prefork children."""

    def __init__(self, app: Celeriac, options: WorkerOptions) -> None:
        self.app = app
        self.options = options
        self.shutdown = Shutdown()
        self.size = PoolSize(
            options.concurrency,
            autoscale=options.autoscale,
            keepalive=options.autoscale_keepalive,
            capacity=max(MAX_CHILDREN, options.concurrency),
        )
        self.slots = SlotTable(self.size.capacity)
        self.children: dict[int, _Child] = {}
        # Slots that should have a child (alive or due to be respawned); a child whose
        # slot is not among them is being retired (it stops as in a warm shutdown).
        self._wanted: set[int] = set()
        self._next_scale = 0.0
        self._backlog: BacklogGauge | None = None
        if self.size.is_autoscaling:
            self._backlog = BacklogGauge(
                lambda: app.create_broker(consumer_id=f"{options.hostname}:autoscale"),
                options.queues,
            )
        self._pid_to_index: dict[int, int] = {}
        self._respawn_at: dict[int, float] = {}
        self._respawn_delay: dict[int, float] = {}
        self._broker: Broker | None = None
        self._broker_lock = threading.Lock()
        self._revocations: RevocationFollower | None = None
        # Task ids revoked with terminate=True, found by the follower thread.
        self._doomed: set[str] = set()
        self._doomed_lock = threading.Lock()
        self.errands = Errands()
        self._sigint_count = 0
        self._signalled_children = False
        # Deaths per task id, kept here when neither the broker nor the result backend
        # can count them (RabbitMQ with rpc:// results). Children forked afterwards
        # inherit the counts, so the redelivery cap holds per worker.
        self.local_crashes: dict[str, int] = {}
        # Write ends of the pipes remote control changes reach each child by.
        self._control_pipes: dict[int, int] = {}

    # -- signals -----------------------------------------------------------------------

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_int)
        signal.signal(signal.SIGQUIT, self._on_quit)

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.shutdown.warm.set()

    def _on_int(self, signum: int, frame: FrameType | None) -> None:
        self._sigint_count += 1
        if self._sigint_count == 1:
            self.shutdown.warm.set()
        else:
            self.shutdown.cold.set()

    def _on_quit(self, signum: int, frame: FrameType | None) -> None:
        self.shutdown.cold.set()

    # -- children ----------------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            with self._broker_lock:  # the main loop and the errand thread both use it
                if self._broker is None:
                    self._broker = self.app.create_broker(
                        consumer_id=f"{self.options.hostname}:supervisor"
                    )
        return self._broker

    def processes(self) -> list[int]:
        return [child.pid for index, child in self.children.items() if index in self._wanted]

    def requests(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(active, reserved) of every child, from the slot table and what each posted
        there (`held.py`): no child is asked."""
        pids = {index: child.pid for index, child in list(self.children.items())}
        return children_requests(self.slots, pids, self.options.hostname)

    def forward_control(self, method: str, arguments: dict[str, Any]) -> None:
        """Send a remote control change to every child (children forked later inherit
        it from this process, which applied it already)."""
        line = json.dumps({"method": method, "arguments": arguments}).encode() + b"\n"
        for index, fd in list(self._control_pipes.items()):
            try:
                os.write(fd, line)
            except OSError as exc:
                logger.warning("Could not pass %s on to child slot %d: %s", method, index, exc)

    def _spawn(self, index: int) -> None:
        self.slots.clear(index)
        self.slots.set_held(index, 0)
        parent = os.getpid()
        # Stop signals are held back from the fork until the child has its own handlers
        # (child_main unblocks them): a SIGTERM that reached it earlier would run the
        # supervisor's inherited handler, and the child would never stop.
        control_in, control_out = os.pipe()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = fork_between_imports()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            os.close(control_in)
            os.close(control_out)
            raise
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if pid == 0:  # the child
            code = 1
            for fd in (control_out, *self._control_pipes.values()):
                with contextlib.suppress(OSError):
                    os.close(fd)
            try:
                code = child_main(
                    self.app,
                    self.options,
                    index=index,
                    slots=self.slots,
                    parent_pid=parent,
                    local_crashes=self.local_crashes,
                    control_fd=control_in,
                )
            except BaseException:
                logger.exception("Child %d crashed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(control_in)
        os.set_blocking(control_out, False)
        old = self._control_pipes.pop(index, None)
        if old is not None:
            with contextlib.suppress(OSError):
                os.close(old)
        self._control_pipes[index] = control_out
        self.children[index] = _Child(pid=pid, started=time.monotonic())
        self._pid_to_index[pid] = index
        logger.debug("Started child %d in slot %d", pid, index)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            index = self._pid_to_index.pop(pid, None)
            if index is None:
                continue
            child = self.children.pop(index)
            self._child_gone(index, child, status)

    def _child_gone(self, index: int, child: _Child, status: int) -> None:
        running = self.slots.read(index)
        self.slots.clear(index)
        self.slots.set_held(index, 0)
        retired = index not in self._wanted
        consumer_id = consumer_id_for(self.options.hostname, child.pid)
        crashed = not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
        crash: RunningTask | None = None
        if child.timed_out is not None:
            self._note_time_limit(child.timed_out)
        elif child.terminated is not None:
            # Killed on purpose (revoked with terminate): not the message's fault. It comes
            # back, and the next child skips it as revoked.
            pass
        elif crashed and running is not None and not self.shutdown.cold.is_set():
            crash = running
            self._note_local_crash_if_alone(running)
        if crashed and not self.shutdown.is_requested():
            how = (
                f"signal {os.WTERMSIG(status)}"
                if os.WIFSIGNALED(status)
                else f"exit code {os.WEXITSTATUS(status)}"
            )
            what = f" while running {running.name}[{running.task_id}]" if running else ""
            logger.error("Child %d died (%s)%s", child.pid, how, what)
            if signals.worker_process_lost.receivers:
                signals.worker_process_lost.send(
                    sender=None,
                    pid=child.pid,
                    exitcode=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                    signum=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                    task_id=running.task_id if running else None,
                    task_name=running.name if running else None,
                    reason=(
                        "time_limit"
                        if child.timed_out is not None
                        else "terminated"
                        if child.terminated is not None
                        else "crashed"
                    ),
                )
        timed_out = child.timed_out
        self.errands.submit(
            f"settle child {child.pid}",
            lambda: self._settle(consumer_id, timed_out=timed_out, crash=crash),
        )
        if retired:
            logger.info("Child %d retired (slot %d)", child.pid, index)
        elif not self.shutdown.is_requested():
            lived = time.monotonic() - child.started
            delay = 0.0
            if crashed and lived < FAST_FAILURE:
                delay = min(MAX_RESPAWN_DELAY, max(0.1, self._respawn_delay.get(index, 0) * 2))
            self._respawn_delay[index] = delay
            self._respawn_at[index] = time.monotonic() + delay

    def _settle(
        self, consumer_id: str, *, timed_out: RunningTask | None, crash: RunningTask | None
    ) -> None:
        """What a dead child leaves to do with the servers (on the errand thread)."""
        running_tags: list[str] = []
        if timed_out is not None and not self._record_time_limit(timed_out):
            # The failure is not recorded, so the redelivered copy would run (and be
            # killed) again: the kill counts toward the message's redelivery cap instead.
            running_tags = [timed_out.tag]
            self._note_crash(timed_out)
        if crash is not None:
            running_tags = [crash.tag]
            self._note_crash(crash)
        self._recover(consumer_id, running_tags)

    def _note_local_crash_if_alone(self, running: RunningTask) -> None:
        """Where neither the broker nor the result backend can count a message's crashes
        (RabbitMQ with rpc:// results), count it here before the next child is forked
        (children inherit the counts)."""
        try:
            if not self.broker.supports_recover and not self.app.backend.supports_crash_ledger:
                self._note_local_crash(running.task_id)
        except Exception:  # isolation boundary
            logger.exception("Could not count the crash of %s", running.task_id)

    def _note_crash(self, running: RunningTask) -> None:
        """Where the broker cannot count a message's crashes (RabbitMQ), count them in
        the result backend's crash ledger, shared by every worker (on the errand thread;
        without a ledger `_note_local_crash_if_alone` counted it already)."""
        try:
            if self.broker.supports_recover:
                return
            backend = self.app.backend
            if backend.supports_crash_ledger:
                backend.note_crash(running.task_id)
        except Exception:  # isolation boundary
            logger.exception("Could not count the crash of %s", running.task_id)

    def _note_time_limit(self, running: RunningTask) -> None:
        """The redelivered copy of a task killed at its time limit is dropped when it
        finds the recorded failure. Where it cannot look (rpc:// results on RabbitMQ) it
        would run, and be killed, forever: the kill counts toward the cap instead."""
        try:
            if not self.broker.supports_recover and not self.app.backend.supports_lookup:
                self._note_local_crash(running.task_id)
        except Exception:  # isolation boundary
            logger.exception("Could not count the time limit of %s", running.task_id)

    def _note_local_crash(self, task_id: str) -> None:
        crashes = self.local_crashes
        crashes[task_id] = crashes.pop(task_id, 0) + 1
        if len(crashes) > MAX_LOCAL_CRASHES:
            del crashes[next(iter(crashes))]  # the least recently crashed

    def _recover(self, consumer_id: str, running: list[str]) -> None:
        try:
            broker = self.broker
            if broker.supports_recover:
                crash_point("before_recover")
                returned = broker.recover(consumer_id, running=running)
                crash_point("after_recover")
                if returned:
                    logger.warning(
                        "Returned %d message(s) held by %s to the queue", returned, consumer_id
                    )
        except Exception:  # isolation boundary: the lease will lapse instead
            logger.exception(
                "Could not return the messages of %s; they come back when their lease lapses",
                consumer_id,
            )

    def _record_time_limit(self, running: RunningTask) -> bool:
        """Store the `TimeLimitExceeded` failure of `running`; False if it could not."""
        limit = (running.deadline or 0) - running.started
        logger.error(
            "Task %s[%s] killed: hard time limit (%.1fs) exceeded",
            running.name,
            running.task_id,
            limit,
        )
        try:
            backend = self.app.backend
            backend.store(
                backend.ready_meta(
                    running.task_id,
                    states.FAILURE,
                    encode_exception(TimeLimitExceeded(round(limit, 3))),
                    traceback=f"TimeLimitExceeded: hard time limit ({limit:.1f}s) exceeded",
                )
            )
        except BackendError as exc:
            logger.error(
                "Could not record the time limit failure of %s (%s); the kill counts toward "
                "its redelivery cap instead",
                running.task_id,
                exc,
            )
            return False
        except Exception:  # isolation boundary
            logger.exception("Could not record the time limit failure of %s", running.task_id)
            return False
        return True

    def _check_deadlines(self) -> None:
        now = time.monotonic()  # the slots' deadlines are monotonic (see limits.py)
        for index, child in self.children.items():
            if child.timed_out is not None:
                continue
            running = self.slots.read(index)
            if running is not None and running.deadline is not None and now > running.deadline:
                child.timed_out = running
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)

    def _follow_revocations(self) -> None:
        """Read revocations on a thread of their own (a hung backend never stalls the
        main loop); the ones with `terminate=True` are acted on by `_terminate_revoked`."""
        try:
            revocations = Revocations(self.app.backend)
        except Exception:  # isolation boundary: revocations are best effort
            logger.exception("Could not follow revocations")
            return

        def found(fresh: list[Revocation]) -> None:
            doomed = {r.task_id for r in fresh if r.terminate}
            if doomed:
                with self._doomed_lock:
                    self._doomed |= doomed

        self._revocations = RevocationFollower(
            revocations, interval=REVOCATION_CHECK, on_fresh=found
        )
        self._revocations.start()

    def _terminate_revoked(self) -> None:
        """Stop children running tasks revoked with `terminate=True`."""
        if not self._doomed:
            return
        with self._doomed_lock:
            doomed, self._doomed = self._doomed, set()
        for index, child in self.children.items():
            running = self.slots.read(index)
            if running is not None and running.task_id in doomed and child.terminated is None:
                logger.warning(
                    "Task %s[%s] revoked with terminate: stopping child %d",
                    running.name,
                    running.task_id,
                    child.pid,
                )
                child.terminated = running
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)

    def _respawn_missing(self) -> None:
        now = time.monotonic()
        for index in sorted(self._wanted):
            if index in self.children:
                continue
            if self._respawn_at.get(index, 0.0) <= now:
                self._spawn(index)

    # -- main loop ---------------------------------------------------------------------

    def run(self) -> int:
        """Run until shut down; return the exit code."""
        self.install_signals()
        if self.size.min_concurrency == 0:
            logger.info("autoscale min 0: one child stays, to fetch work (children are consumers)")
        for index in range(self.size.wanted()):
            self._wanted.add(index)
            self._spawn(index)
        if self._backlog is not None:
            self._backlog.start()
        self._follow_revocations()
        try:
            while True:
                self._reap()
                if self.shutdown.cold.is_set():
                    self._cold_stop()
                    return 0
                if self.shutdown.warm.is_set():
                    if not self._signalled_children:
                        logger.warning("Warm shutdown: finishing running tasks")
                        self._signal_children(signal.SIGTERM)
                        self._signalled_children = True
                    if not self.children:
                        return 0
                else:
                    self._check_deadlines()
                    self._terminate_revoked()
                    self._resize()
                    self._respawn_missing()
                time.sleep(TICK)
        finally:
            if self._backlog is not None:
                self._backlog.stop()
            if self._revocations is not None:
                self._revocations.stop()
            if not self.errands.drain(ERRANDS_GRACE):
                logger.warning(
                    "Still returning the children's messages after %.0f s; leaving the "
                    "rest to come back when their leases lapse",
                    ERRANDS_GRACE,
                )
            if self._broker is not None:
                self._broker.close()

    # -- pool size -----------------------------------------------------------------------

    def _resize(self) -> None:
        """Weigh the load (autoscaling), then add slots or retire children to match
        the size wanted."""
        now = time.monotonic()
        if self.size.is_autoscaling and now >= self._next_scale:
            self._next_scale = now + SCALE_INTERVAL
            self.size.observe(
                processes=len(self._wanted), qty=self._load(), received=self._received()
            )
        missing = self.size.wanted() - len(self._wanted)
        if missing > 0:
            free = (
                index
                for index in range(self.slots.size)
                if index not in self._wanted and index not in self.children
            )
            for index in itertools.islice(free, missing):
                self._wanted.add(index)
                self._respawn_at.pop(index, None)
                self._respawn_delay.pop(index, None)
        elif missing < 0:
            self._retire(-missing, idle_only=self.size.is_autoscaling)
        self.size.processes = len(self._wanted)

    def _is_busy(self, index: int) -> bool:
        return self.slots.read(index) is not None or self.slots.held(index) > 0

    def _retire(self, count: int, *, idle_only: bool) -> None:
        """Retire `count` slots: those without a child first, then idle children, then
        (unless `idle_only`) busy ones, which finish their task first."""
        order = sorted(
            self._wanted,
            key=lambda i: (i in self.children, i in self.children and self._is_busy(i), -i),
        )
        for index in order[:count]:
            child = self.children.get(index)
            if child is not None and idle_only and self._is_busy(index):
                return
            self._wanted.discard(index)
            self._respawn_at.pop(index, None)
            if child is not None:
                logger.info("Retiring child %d (slot %d)", child.pid, index)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)

    def _load(self) -> int:
        """What the children hold; plus the queues' backlog when every one is full."""
        held = [self.slots.held(i) for i in self._wanted if i in self.children]
        qty = sum(held)
        full = max(1, self.options.prefetch_multiplier)
        every_child_full = bool(held) and len(held) == len(self._wanted) and min(held) >= full
        if self._backlog is not None and every_child_full:
            qty += self._backlog.latest()
        return qty

    def _received(self) -> int:
        """Grows whenever a child takes a message: finished plus held."""
        return self.slots.done() + sum(self.slots.held(i) for i in self.children)

    def _signal_children(self, signum: int) -> None:
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    def _cold_stop(self) -> None:
        logger.warning("Cold shutdown: stopping children now, returning their messages")
        self._signal_children(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.01)
