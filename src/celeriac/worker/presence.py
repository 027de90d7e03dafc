"""Presence: every consuming process heartbeats into the broker; any live one reaps a
silent one.

A process that dies with its supervisor (an OOM-killed container, `docker kill`, a lost
node, a threads or asyncio worker killed with its prefetch window) has nobody left to
return its messages. So each consuming process keeps a presence record in the broker,
refreshed by its keeper thread every `HEARTBEAT_INTERVAL` and stamped with the broker
server's clock, listing the messages it is running. Every live consumer looks for records
older than `worker_lost_after` every `REAP_INTERVAL` and returns what such a consumer held
(`Broker.reap`), a crash counted against what it was running, so a task that kills its
whole process group reaches the dead letters after `task_redelivery_limit` deaths.

A message is marked running at the next heartbeat after it starts; a redelivered one is
marked before it starts (one round trip, only on that rare path), so even a task that
kills its process at once is counted from its second delivery on. A process that was only
stalled and finds it was reaped forgets the messages it had not started (they went back
to the queue) and registers again.

A consumer reaps only once it has itself heartbeaten without a break for
`worker_lost_after`: after a broker outage every record is old, and the first consumer
back must not take the others, still reconnecting, for dead. Every live one has had the
same time to refresh its record by then.

What lives elsewhere: the records and the atomic reap (`brokers/*`); the thread that
calls `tick` is started by `holdings.py`, beside the keeper (whose lease renewals and
sweeps can take a while) so that nothing delays a heartbeat.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from celeriac.exceptions import BrokerConnectionError

if TYPE_CHECKING:
    from collections.abc import Callable

    from celeriac.brokers.base import Broker

__all__ = ["HEARTBEAT_INTERVAL", "Presence"]

logger = logging.getLogger("celeriac.worker")

# Seconds between heartbeats.
HEARTBEAT_INTERVAL = 0.25
# Seconds between looks for silent consumers (less when worker_lost_after is short).
REAP_INTERVAL = 1.0


class Presence:
    """One consuming process's presence record, and its share of the reaping.

    Args:
        broker: The process's broker (`supports_presence`).
        worker: The worker's node name.
        pool: The pool's name.
        concurrency: Tasks this process runs at once.
        snapshot: Returns (messages held, tags running) now.
        on_reaped: Called when this process finds it was presumed dead and reaped.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        worker: str,
        pool: str,
        concurrency: int,
        snapshot: Callable[[], tuple[int, list[str]]],
        on_reaped: Callable[[], None],
    ) -> None:
        self.broker = broker
        self.identity: dict[str, str | int] = {
            "worker": worker,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pool": pool,
            "concurrency": concurrency,
        }
        self._snapshot = snapshot
        self._on_reaped = on_reaped
        self._registered = False
        self._withdrawn = False
        # One heartbeat at a time, so the record never goes back to an older snapshot.
        self._lock = threading.Lock()
        self._last_beat = float("-inf")
        self._last_reap = float("-inf")
        self._reap_every = min(REAP_INTERVAL, broker.lost_after / 3)
        self._unreachable = False
        # Since when heartbeats have gone through without a break (None: not now).
        self._healthy_since: float | None = None

    def beat(self) -> None:
        """Refresh the record now (registering it first if need be)."""
        with self._lock:
            if self._withdrawn:
                return
            held, running = self._snapshot()
            if not self._registered:
                self.broker.heartbeat(self.identity, held=held, running=running, register=True)
                self._registered = True
            elif not self.broker.heartbeat(self.identity, held=held, running=running):
                logger.error(
                    "This process (%s) was silent for more than worker_lost_after (%.0f s) and "
                    "was presumed dead: the messages it held went back to the queue, and the "
                    "tasks it is running may run twice. Registering again.",
                    self.broker.consumer_id,
                    self.broker.lost_after,
                )
                self._on_reaped()
                held, running = self._snapshot()
                self.broker.heartbeat(self.identity, held=held, running=running, register=True)
            self._last_beat = time.monotonic()

    def reap(self) -> int:
        """Return the messages of consumers silent for longer than `worker_lost_after`."""
        return sum(self.broker.reap().values())

    def tick(self) -> None:
        """Heartbeat and reap when due (called every HEARTBEAT_INTERVAL)."""
        now = time.monotonic()
        try:
            if now - self._last_beat >= HEARTBEAT_INTERVAL:
                self.beat()
                if self._healthy_since is None:
                    self._healthy_since = now
            healthy = self._healthy_since is not None and (
                now - self._healthy_since >= self.broker.lost_after
            )
            if healthy and now - self._last_reap >= self._reap_every:
                self._last_reap = now
                self.reap()
        except BrokerConnectionError as exc:
            # The consumer loop reports the outage; the record resumes when it ends.
            self._healthy_since = None
            if not self._unreachable:
                self._unreachable = True
                logger.debug("Presence heartbeat failed: %s", exc)
            return
        except Exception:
            self._healthy_since = None
            raise
        self._unreachable = False

    def mark_running(self) -> None:
        """A redelivered message is about to start: list it as running now, before it can
        kill this process (a crash it causes is counted even if it does so at once)."""
        try:
            self.beat()
        except Exception:  # isolation boundary: the mark is a safety net, not a must
            logger.warning("Could not mark a redelivered message as running", exc_info=True)

    def withdraw(self, *, hand_off: bool) -> None:
        """Remove the record (a clean exit: nothing is left to reap); with `hand_off`
        (a warm shutdown, not a prefork child replaced after --max-tasks-per-child), the
        last consumer to leave hands the delayed messages over (see the Redis broker)."""
        with self._lock:
            self._withdrawn = True
            if not self._registered:
                return
        try:
            self.broker.withdraw(hand_off=hand_off)
        except Exception:  # isolation boundary: the record goes when it is reaped
            logger.warning("Could not remove this process's presence record", exc_info=True)
