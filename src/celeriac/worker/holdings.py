"""What a consuming process holds, and the acks it owes.

`Holdings` tracks every delivery a process holds (prefetched or running) and runs a
keeper thread beside the consumer that:

- renews the leases of everything held, so a task longer than the visibility timeout is
  never handed to a second worker;
- on warm shutdown, returns prefetched (not started) messages to the queue at once;
- beside it, a presence thread keeps this process's presence record fresh and returns
  the messages of consumers that fell silent (`presence.py`), and on the same tick sends
  the worker's event heartbeat (`events.py`);
- now and then makes lapsed leases of dead consumers visible again;
- beside it, in a prefork child, a watcher thread notices the supervisor's death,
  returns everything this process holds and exits (no orphan keeps working, even when
  the broker hangs).

`AckBuffer` batches the acks of finished tasks (and the deferrals of early messages) so
they go out with the next fetch. The consumer and the executor both use them; `Shutdown`
carries the stop requests they read.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from celeriac._crashpoints import crash_point
from celeriac.brokers.base import Deferral
from celeriac.exceptions import BrokerConnectionError
from celeriac.worker.presence import HEARTBEAT_INTERVAL, Presence

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from celeriac.brokers.base import Broker, Delivery
    from celeriac.protocol.message import Message

__all__ = ["AckBuffer", "Holdings", "Shutdown"]

logger = logging.getLogger("celeriac.worker")

# Keeper thread tick.
KEEPER_TICK = 0.2
# Longest gap between lease renewals, and between sweeps for lapsed leases.
MAX_RENEW_INTERVAL = 30.0
SWEEP_INTERVAL = 10.0
# How long an orphaned process waits for a fetch under way before returning what it
# holds (a fetch blocks at most RECEIVE_TIMEOUT plus its round trip).
ORPHAN_FETCH_WAIT = 5.0
# How long an orphaned process tries to return what it holds before it exits anyway.
ORPHAN_LEAVE_WAIT = 15.0


class Shutdown:
    """Stop requests, set from signal handlers and read by loops."""

    def __init__(self) -> None:
        self.warm = threading.Event()
        self.cold = threading.Event()

    def is_requested(self) -> bool:
        return self.warm.is_set() or self.cold.is_set()


class Holdings:
    """The deliveries one process holds, and the keeper thread that looks after them.

    Args:
        broker: The broker the deliveries came from.
        shutdown: Stop requests (a warm one returns prefetched messages at once).
        window: How many deliveries may be held at once.
        parent_pid: Exit when this process stops being our parent (prefork children).
        worker: The worker's node name, for the presence record.
        pool: The pool's name, for the presence record.
        concurrency: Tasks run at once, for the presence record.
    """

    def __init__(
        self,
        broker: Broker,
        shutdown: Shutdown,
        *,
        window: int,
        parent_pid: int | None = None,
        worker: str = "",
        pool: str = "solo",
        concurrency: int = 1,
    ) -> None:
        self.broker = broker
        self.shutdown = shutdown
        self.window = max(1, window)
        self.parent_pid = parent_pid
        self.done = 0
        self._held: dict[str, Delivery] = {}
        self._started: set[str] = set()
        # Started running (past admission), not yet finished: what a presence record lists
        # as running. `_started` also holds what waits for a thread of the pool.
        self._running: set[str] = set()
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
        self._presence_thread: threading.Thread | None = None
        self._periodic: list[tuple[Callable[[], object], float, list[float]]] = []
        self._tick_jobs: list[Callable[[], object]] = []
        renew = broker.visibility_timeout / 3 if broker.supports_leases else 5.0
        self._renew_every = max(0.5, min(MAX_RENEW_INTERVAL, renew))
        self.presence: Presence | None = None
        if broker.supports_presence:
            self.presence = Presence(
                broker,
                worker=worker,
                pool=pool,
                concurrency=concurrency,
                snapshot=self._presence_snapshot,
                on_reaped=self._forget_prefetched,
            )

    # -- bookkeeping ------------------------------------------------------------------

    def room(self, *, wait: float | None = None, batch: int = 1) -> int:
        """Free places in the window, waiting up to `wait` seconds for one.

        With `batch` above 1, waits for that many while at least as many held deliveries
        wait to start: they keep the slots busy meanwhile, and fewer, larger fetches
        cost the consuming thread less (a round trip and a turn of the loop each).
        """
        with self._changed:
            if wait is not None:
                deadline = time.monotonic() + wait
                while len(self._held) > self.window - self._wanted(batch):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self.shutdown.is_requested():
                        break
                    self._changed.wait(remaining)
            return self.window - len(self._held)

    def _wanted(self, batch: int) -> int:
        waiting = len(self._held) - len(self._running)
        return min(batch, self.window) if waiting >= batch else 1

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

    def starting(self, delivery: Delivery) -> None:
        """`delivery` (claimed) is about to run: it is listed as running at the next
        heartbeat, a redelivered one before it starts (see `presence.py`)."""
        with self._lock:
            self._running.add(delivery.tag)
        if delivery.redelivered and self.presence is not None:
            self.presence.mark_running()

    def _presence_snapshot(self) -> tuple[int, list[str]]:
        with self._lock:
            running = [tag for tag in self._running if tag in self._held]
            return len(self._held) + len(self._parked), running

    def _forget_prefetched(self) -> None:
        """This process was reaped: what it had not started went back to the queue (and
        may run elsewhere), so it is not started here."""
        with self._changed:
            waiting = [tag for tag in self._held if tag not in self._started]
            for tag in waiting:
                del self._held[tag]
            self._changed.notify_all()

    def release(self, delivery: Delivery) -> None:
        """Forget a delivery that was acked, rejected or dead-lettered."""
        with self._changed:
            self._held.pop(delivery.tag, None)
            self._parked.pop(delivery.tag, None)
            self._started.discard(delivery.tag)
            self._running.discard(delivery.tag)
            self.done += 1
            self._changed.notify_all()

    def park(self, delivery: Delivery) -> None:
        """Keep a finished delivery leased, out of the window, until `release`."""
        with self._changed:
            self._running.discard(delivery.tag)
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

    def snapshot(self) -> tuple[list[Delivery], list[Delivery]]:
        """(running, prefetched and not started), for remote control."""
        with self._lock:
            running = [d for tag, d in self._held.items() if tag in self._started]
            waiting = [d for tag, d in self._held.items() if tag not in self._started]
        return running, waiting

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
        """Also run `job` on the keeper thread every `seconds` (a quick local job: the
        control pipe; never a call to a server that may hang)."""
        self._periodic.append((job, seconds, [0.0]))

    def on_presence_tick(self, job: Callable[[], object]) -> None:
        """Also run `job` on the presence thread, right after each presence tick (every
        `HEARTBEAT_INTERVAL`, also where the broker keeps no presence records): the
        worker's event heartbeat, so it stops when presence stops."""
        self._tick_jobs.append(job)

    def start(self) -> None:
        if self.presence is not None:
            # Present before the first fetch; if the broker is not reachable yet, the
            # presence thread registers once it is.
            try:
                self.presence.tick()
            except Exception:  # isolation boundary: the presence thread tries again
                logger.warning("Could not register this process's presence", exc_info=True)
        if self.presence is not None or self._tick_jobs:
            self._presence_thread = threading.Thread(
                target=self._keep_present, name="celeriac-presence", daemon=True
            )
            self._presence_thread.start()
        self._thread = threading.Thread(target=self._keep, name="celeriac-keeper", daemon=True)
        self._thread.start()
        if self.parent_pid is not None:
            # Apart from the keeper, whose broker calls may hang: an orphan always exits.
            threading.Thread(
                target=self._watch_parent, name="celeriac-orphan-watch", daemon=True
            ).start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._presence_thread is not None:
            self._presence_thread.join(timeout=5)
        if self.presence is not None:
            with self._lock:
                holding = bool(self._held or self._parked)
            # With messages still held (their acks could not be sent), the record stays:
            # it falls silent and a live consumer returns them.
            if not holding:
                self.presence.withdraw(hand_off=self.shutdown.is_requested())

    def _keep(self) -> None:
        last_renew = last_sweep = time.monotonic()
        while not self._stop.wait(KEEPER_TICK):
            try:
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

    def _keep_present(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL):
            try:
                if self.presence is not None:
                    self.presence.tick()
            except Exception:  # isolation boundary: keep heartbeating whatever happens
                logger.exception("Presence heartbeat hiccup; continuing")
            for job in self._tick_jobs:
                try:
                    job()
                except Exception:  # isolation boundary: one job must not stop the others
                    logger.exception("Presence tick job hiccup; continuing")

    def _renew(self) -> None:
        with self._lock:
            held = [*self._held.values(), *self._parked.values()]
        if held or not self.broker.supports_leases:
            self.broker.extend(held, seconds=self.broker.visibility_timeout)

    def _watch_parent(self) -> None:
        while not self._stop.wait(KEEPER_TICK):
            if os.getppid() != self.parent_pid:
                self._orphaned()

    def _orphaned(self) -> None:
        logger.error("Supervisor %s is gone; returning held messages and exiting", self.parent_pid)
        leaving = threading.Thread(target=self._leave_quietly, name="celeriac-leave", daemon=True)
        leaving.start()
        # A broker that hangs must not keep an orphan alive: past this, what it holds
        # comes back when its leases lapse.
        leaving.join(ORPHAN_LEAVE_WAIT)
        os._exit(70)

    def _leave_quietly(self) -> None:
        try:
            self.leave()
        except Exception:
            logger.exception(
                "Could not return the held messages; they come back when their leases lapse"
            )


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
