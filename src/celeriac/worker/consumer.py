"""The receive loop of a consuming process, and the keeper of what it holds.

`Holdings` tracks every delivery a process holds (prefetched or running) and runs a
keeper thread beside the consumer that:

- renews the leases of everything held, so a task longer than the visibility timeout is
  never handed to a second worker;
- on warm shutdown, returns prefetched (not started) messages to the queue at once;
- now and then makes lapsed leases of dead consumers visible again;
- in a prefork child, notices the supervisor's death, returns everything this process
  holds and exits (no orphan keeps working).

`Consumer.run()` (prefork children, solo, threads) fetches batches (its prefetch window)
in one round trip each and runs them inline or on threads. The asyncio pool has its own
loop over the same `Holdings`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from celeriac._crashpoints import crash_point
from celeriac.brokers.base import Deferral
from celeriac.exceptions import BrokerConnectionError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from celeriac.brokers.base import Broker, Delivery
    from celeriac.protocol.message import Message
    from celeriac.worker.execute import Executor

__all__ = ["Consumer", "Holdings", "Shutdown", "consumer_id_for"]

logger = logging.getLogger("celeriac.worker")

# How long one receive call may block; bounds how fast a stop request is noticed.
RECEIVE_TIMEOUT = 1.0
# Keeper thread tick.
KEEPER_TICK = 0.2
# How long a stopping consumer waits for results still on their way to the backend.
SPOOL_GRACE = 10.0
# How often a consuming process reads new revocations.
REVOCATION_REFRESH = 1.0
# Longest gap between lease renewals, and between sweeps for lapsed leases.
MAX_RENEW_INTERVAL = 30.0
SWEEP_INTERVAL = 10.0
# Pause between fetches while the broker is unreachable (its own retries gave up).
OUTAGE_PAUSE = 1.0
# How long an orphaned process waits for a fetch under way before returning what it
# holds (a fetch blocks at most RECEIVE_TIMEOUT plus its round trip).
ORPHAN_FETCH_WAIT = 5.0


def consumer_id_for(hostname: str, pid: int) -> str:
    """The lease owner name of the consuming process `pid` of worker `hostname`."""
    return f"{hostname}:{pid}"


class Shutdown:
    """Stop requests, set from signal handlers and read by loops."""

    def __init__(self) -> None:
        self.warm = threading.Event()
        self.cold = threading.Event()

    def is_requested(self) -> bool:
        return self.warm.is_set() or self.cold.is_set()


def resident_kib() -> int:
    """This process's resident memory in KiB (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


class Holdings:
    """The deliveries one process holds, and the keeper thread that looks after them.

    Args:
        broker: The broker the deliveries came from.
        shutdown: Stop requests (a warm one returns prefetched messages at once).
        window: How many deliveries may be held at once.
        parent_pid: Exit when this process stops being our parent (prefork children).
    """

    def __init__(
        self,
        broker: Broker,
        shutdown: Shutdown,
        *,
        window: int,
        parent_pid: int | None = None,
    ) -> None:
        self.broker = broker
        self.shutdown = shutdown
        self.window = max(1, window)
        self.parent_pid = parent_pid
        self.done = 0
        self._held: dict[str, Delivery] = {}
        self._started: set[str] = set()
        # Finished, waiting for their result to reach the backend: still leased (and
        # renewed), but no longer taking a place in the window.
        self._parked: dict[str, Delivery] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._returned_prefetch = False
        # Held around each fetch; `leave` takes it to set `_leaving`, so the fetch under
        # way finishes before what this process holds is returned and none starts after.
        self._fetch_gate = threading.Lock()
        self._leaving = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._periodic: list[tuple[Callable[[], object], float, list[float]]] = []
        renew = broker.visibility_timeout / 3 if broker.supports_leases else 5.0
        self._renew_every = max(0.5, min(MAX_RENEW_INTERVAL, renew))

    # -- bookkeeping ------------------------------------------------------------------

    def room(self, *, wait: float | None = None) -> int:
        """Free places in the window (waiting up to `wait` seconds for one)."""
        with self._changed:
            if wait is not None and len(self._held) >= self.window:
                self._changed.wait(wait)
            return self.window - len(self._held)

    def hold(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            for delivery in deliveries:
                self._held[delivery.tag] = delivery

    def claim(self, delivery: Delivery) -> bool:
        """Mark a held delivery as started; False if it was already returned."""
        with self._lock:
            if delivery.tag not in self._held:
                return False
            self._started.add(delivery.tag)
            return True

    def release(self, delivery: Delivery) -> None:
        """Forget a delivery that was acked, rejected or dead-lettered."""
        with self._changed:
            self._held.pop(delivery.tag, None)
            self._parked.pop(delivery.tag, None)
            self._started.discard(delivery.tag)
            self.done += 1
            self._changed.notify_all()

    def park(self, delivery: Delivery) -> None:
        """Keep a finished delivery leased, out of the window, until `release`."""
        with self._changed:
            if self._held.pop(delivery.tag, None) is not None:
                self._parked[delivery.tag] = delivery
            self._changed.notify_all()

    @property
    def leaving(self) -> bool:
        """`leave` has begun: start nothing more (what is held is being returned)."""
        return self._leaving

    def fetch(self, receive: Callable[[], list[Delivery]]) -> list[Delivery]:
        """Run `receive` (a fetch), or take nothing once this process is leaving."""
        with self._fetch_gate:
            if self._leaving:
                return []
            return receive()

    def leave(self) -> None:
        """Take no more messages and return every message this process holds.

        A fetch under way finishes first: otherwise its messages could be leased to
        this process after the return had read what it holds, and would wait out the
        visibility timeout (another orphan's returned message, fetched at that moment,
        did so once). Waits at most ORPHAN_FETCH_WAIT for it.
        """
        acquired = self._fetch_gate.acquire(timeout=ORPHAN_FETCH_WAIT)
        if not acquired:
            logger.warning("A fetch is still under way; returning held messages anyway")
        self._leaving = True
        if acquired:
            self._fetch_gate.release()
        if self.broker.supports_recover:
            self.broker.recover(self.broker.consumer_id)

    def is_parked(self, delivery: Delivery) -> bool:
        return delivery.tag in self._parked

    def count(self) -> int:
        with self._lock:
            return len(self._held)

    def return_prefetched(self) -> None:
        """Give every held, not started message back to the queue now."""
        with self._changed:
            waiting = [d for tag, d in self._held.items() if tag not in self._started]
            for delivery in waiting:
                del self._held[delivery.tag]
            self._changed.notify_all()
        if waiting:
            logger.info("Returning %d prefetched message(s) to the queue", len(waiting))
            try:
                self.broker.requeue_many(waiting)
            except Exception:
                logger.exception(
                    "Could not return prefetched messages; their leases will "
                    "lapse and they will come back"
                )

    # -- keeper thread ----------------------------------------------------------------

    def every(self, seconds: float, job: Callable[[], object]) -> None:
        """Also run `job` on the keeper thread every `seconds` (e.g. revocations)."""
        self._periodic.append((job, seconds, [0.0]))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._keep, name="celeriac-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _keep(self) -> None:
        last_renew = last_sweep = time.monotonic()
        while not self._stop.wait(KEEPER_TICK):
            try:
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    self._orphaned()
                if self.shutdown.warm.is_set() and not self._returned_prefetch:
                    self._returned_prefetch = True
                    self.broker.stop_consuming()
                    self.return_prefetched()
                now = time.monotonic()
                if now - last_renew >= self._renew_every:
                    last_renew = now
                    self._renew()
                if now - last_sweep >= SWEEP_INTERVAL:
                    last_sweep = now
                    self.broker.restore_expired()
                for job, seconds, last in self._periodic:
                    if now - last[0] >= seconds:
                        last[0] = now
                        job()
            except Exception:  # isolation boundary: keep renewing whatever happens
                logger.exception("Lease keeper hiccup; continuing")

    def _renew(self) -> None:
        with self._lock:
            held = [*self._held.values(), *self._parked.values()]
        if held or not self.broker.supports_leases:
            self.broker.extend(held, seconds=self.broker.visibility_timeout)

    def _orphaned(self) -> None:
        logger.error("Supervisor %s is gone; returning held messages and exiting", self.parent_pid)
        try:
            self.leave()
        except Exception:
            logger.exception(
                "Could not return the held messages; they come back when their leases lapse"
            )
        finally:
            os._exit(70)


class AckBuffer:
    """Acks of finished tasks, and deferrals of messages that came before their time,
    sent together: one round trip per batch, not per task.

    A finished task's message stays held (its lease renewed) until `flush` acks it, so
    holding the ack back changes nothing but the number of round trips. The same holds
    for a message handed back to wait broker-side for its ETA or rate-limit slot: it
    stays leased here until the deferral goes out. The consumer flushes before every
    fetch and before it stops; a crash in between makes those messages come back, and
    the executor drops the copies whose result is already stored (and defers an early
    one again). Safe to `add` and `defer` from several threads.
    """

    def __init__(self, broker: Broker, holdings: Holdings) -> None:
        self.broker = broker
        self.holdings = holdings
        self._pending: list[Delivery] = []
        self._deferrals: list[Deferral] = []
        self._tags: set[str] = set()
        self._lock = threading.Lock()

    def add(self, delivery: Delivery) -> None:
        with self._lock:
            self._pending.append(delivery)
            self._tags.add(delivery.tag)

    def defer(self, delivery: Delivery, *, eta: datetime, message: Message | None) -> None:
        """Hand `delivery` back to wait for `eta`, with the next fetch."""
        with self._lock:
            self._deferrals.append(Deferral(delivery, eta, message))
            self._tags.add(delivery.tag)

    def holds(self, delivery: Delivery) -> bool:
        return delivery.tag in self._tags

    def settle(self, delivery: Delivery) -> None:
        """A handled delivery leaves the window: parked (still held) while its ack
        waits here, released otherwise (unless something else parked it)."""
        if self.holds(delivery):
            self.holdings.park(delivery)
        elif not self.holdings.is_parked(delivery):
            self.holdings.release(delivery)

    def take(self) -> list[Delivery]:
        """Everything waiting to be acked (to send with the next fetch)."""
        with self._lock:
            pending, self._pending = self._pending, []
            self._tags.difference_update(d.tag for d in pending)
        return pending

    def send_deferrals(self) -> None:
        """Send the waiting deferrals in one call. While the broker cannot be reached
        they are kept (their messages held) and `BrokerConnectionError` propagates; a
        deferral the broker refuses returns its message to the queue instead."""
        with self._lock:
            deferrals, self._deferrals = self._deferrals, []
            self._tags.difference_update(d.delivery.tag for d in deferrals)
        if not deferrals:
            return
        deliveries = [item.delivery for item in deferrals]
        crash_point("before_defer")
        try:
            self.broker.defer_many(deferrals)
        except BrokerConnectionError:
            with self._lock:
                self._deferrals[:0] = deferrals
                self._tags.update(d.tag for d in deliveries)
            raise
        except Exception:  # isolation boundary: as for a delivery that cannot be handled
            logger.exception(
                "Could not hand %d message(s) back to wait for their time; returning "
                "them to the queue",
                len(deferrals),
            )
            try:
                self.broker.requeue_many(deliveries)
            except Exception:
                logger.exception(
                    "Could not return them either; their leases will lapse and they will come back"
                )
        self.done(deliveries)
        crash_point("after_defer")

    def give_back(self, pending: list[Delivery]) -> None:
        """Acks that could not be sent: keep them (and their messages held) for later."""
        if not pending:
            return
        with self._lock:
            self._pending[:0] = pending
            self._tags.update(d.tag for d in pending)

    def done(self, pending: list[Delivery]) -> None:
        """Acks that were sent: forget their messages."""
        for delivery in pending:
            self.holdings.release(delivery)

    def receive_after(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[Delivery]:
        """Send the waiting acks and fetch the next batch, in one round trip where the
        broker can. When the broker cannot be reached the acks are kept for later and
        `BrokerConnectionError` propagates."""
        self.send_deferrals()
        pending = self.take()
        if pending:
            crash_point("before_ack")
        try:
            batch = self.broker.receive_after_ack(pending, queues, limit=limit, timeout=timeout)
        except BrokerConnectionError:
            self.give_back(pending)
            raise
        if pending:
            self.done(pending)
            crash_point("after_ack")
        return batch

    def flush(self) -> None:
        """Send waiting deferrals and acks now (on their own)."""
        try:
            self.send_deferrals()
        except BrokerConnectionError as exc:
            # Kept, with their messages held: a process that never gets to send them
            # returns the messages, and the early ones are deferred again.
            logger.warning("Cannot hand back %d message(s) now (%s)", len(self._deferrals), exc)
        pending = self.take()
        if not pending:
            return
        crash_point("before_ack")
        try:
            self.broker.ack_many(pending)
        except BrokerConnectionError as exc:
            # The broker is away: keep the acks (and the messages held) for the next
            # flush; a process that never gets to send them returns the messages and
            # the copies are dropped as already done.
            logger.warning("Cannot ack %d message(s) now (%s); will retry", len(pending), exc)
            self.give_back(pending)
            return
        self.done(pending)
        crash_point("after_ack")


class Consumer:
    """Fetches deliveries for one process and runs them with an `Executor`.

    Args:
        broker: This process's broker (its consumer_id owns the leases).
        executor: Runs each delivery.
        queues: Queues to consume, in order.
        prefetch: Messages fetched ahead per slot (the prefetch multiplier).
        shutdown: Stop requests.
        concurrency: Tasks run at once (threads); 1 runs them inline in this thread.
        max_tasks: Leave after this many tasks (`--max-tasks-per-child`).
        max_memory_kib: Leave after a task once resident memory passes this.
        parent_pid: Exit when this process stops being our parent (prefork children).
        receive_timeout: Longest wait in one receive call (how soon a stop is noticed).
    """

    def __init__(
        self,
        broker: Broker,
        executor: Executor,
        *,
        queues: Sequence[str],
        prefetch: int,
        shutdown: Shutdown,
        concurrency: int = 1,
        max_tasks: int | None = None,
        max_memory_kib: int | None = None,
        parent_pid: int | None = None,
        receive_timeout: float = RECEIVE_TIMEOUT,
    ) -> None:
        self.broker = broker
        self.executor = executor
        self.receive_timeout = receive_timeout
        self.queues = list(queues)
        self.concurrency = max(1, concurrency)
        self.shutdown = shutdown
        self.max_tasks = max_tasks
        self.max_memory_kib = max_memory_kib
        self.holdings = Holdings(
            broker, shutdown, window=max(1, prefetch) * self.concurrency, parent_pid=parent_pid
        )
        self.holdings.every(REVOCATION_REFRESH, executor.revocations.refresh)
        self.acks = AckBuffer(broker, self.holdings)
        executor.acks = self.acks
        executor.holdings = self.holdings
        self._pool: ThreadPoolExecutor | None = None
        self._broker_lost = False
        self._handled = 0

    def run(self) -> str:
        """Consume until stopped; return why ("shutdown", "max-tasks", "max-memory")."""
        holdings = self.holdings
        holdings.start()
        if self.concurrency > 1:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="celeriac-task")
        reason = "shutdown"
        try:
            self._declare_queues()
            # Know what was revoked before taking the first message.
            self.executor.revocations.refresh()
            while not self.shutdown.is_requested():
                if self.executor.spool.is_full:
                    # Results are waiting for the backend: stop taking new work.
                    self.shutdown.warm.wait(self.receive_timeout)
                    continue
                free = holdings.room(wait=self.receive_timeout)
                if free <= 0:
                    continue
                batch = self._receive(free)
                if not batch:
                    continue
                holdings.hold(batch)
                crash_point("after_fetch")
                for delivery in batch:
                    if self.shutdown.is_requested() or holdings.leaving:
                        break
                    self._dispatch(delivery)
                stop = self._should_leave()
                if stop:
                    reason = stop
                    break
        finally:
            holdings.return_prefetched()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            # Give results waiting for the backend a moment; what is still waiting after
            # that is returned with its message (not acked) and runs again.
            self.executor.spool.wait_empty(SPOOL_GRACE)
            self.acks.flush()
            holdings.stop()
        return reason

    def _dispatch(self, delivery: Delivery) -> None:
        if not self.holdings.claim(delivery):
            return
        if self._pool is None:
            self._run_one(delivery)
        else:
            self._pool.submit(self._run_one, delivery)

    def _run_one(self, delivery: Delivery) -> None:
        try:
            self.executor.handle(delivery)
        except Exception:  # isolation boundary: never let one delivery stop the loop
            logger.exception(
                "Delivery %s could not be handled; returning it to the queue", delivery.tag
            )
            try:
                self.broker.reject(delivery, requeue=True)
            except Exception:
                logger.exception(
                    "Delivery %s could not be returned either; its lease will "
                    "lapse and it will come back",
                    delivery.tag,
                )
        finally:
            self._handled += 1
            self.acks.settle(delivery)

    def _should_leave(self) -> str | None:
        if self.max_tasks is not None and self._handled >= self.max_tasks:
            return "max-tasks"
        if self.max_memory_kib is not None and resident_kib() > self.max_memory_kib:
            return "max-memory"
        return None

    def _declare_queues(self) -> None:
        """Declare the consumed queues, waiting out a broker that is not there yet."""
        while not self.shutdown.is_requested():
            try:
                for queue in self.queues:
                    self.broker.declare(queue)
            except BrokerConnectionError as exc:
                self._lost(exc)
            else:
                self._found()
                return

    def _lost(self, exc: BaseException) -> None:
        if not self._broker_lost:
            self._broker_lost = True
            logger.warning("Broker unreachable; consuming resumes once it is back: %s", exc)
        deadline = time.monotonic() + OUTAGE_PAUSE
        while not self.shutdown.is_requested() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _found(self) -> None:
        if self._broker_lost:
            self._broker_lost = False
            logger.warning("Broker reachable again; consuming")

    def _receive(self, limit: int) -> list[Delivery]:
        """Fetch a batch; while the broker is unreachable, wait and report nothing.

        The broker's own reconnect retries have given up when this sees the error. The
        process keeps what it holds and tries again until the broker is back: a
        replacement process could not connect either (Celery's consumer waits too).
        """
        try:
            batch = self.holdings.fetch(
                lambda: self.acks.receive_after(
                    self.queues, limit=limit, timeout=self.receive_timeout
                )
            )
        except BrokerConnectionError as exc:
            self._lost(exc)
            return []
        self._found()
        return batch
