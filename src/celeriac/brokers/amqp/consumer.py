"""The consuming connection of the RabbitMQ broker.

One `Consumer` per broker object holds one connection and one channel with a
`basic.consume` per requested queue. RabbitMQ pushes deliveries up to the channel's
prefetch window; they wait in a local buffer until `receive` hands them out.

Threads: `receive` runs in the worker's consuming thread, while `ack`/`reject` and
`keep_alive` (heartbeats, called by `extend` and by the broker's keep-alive thread)
may come from others. Every use of the connection happens under one lock, held only
while frames are read or written; `receive` waits for data *outside* the lock, in
`select` on the socket and on a wake-up pipe, so an ack from a task thread never waits
for a slow receive. When another thread reads deliveries into the buffer, it writes to
the pipe so the waiting `receive` returns them at once.

The window: `basic.qos(prefetch_count=held + limit, global=True)`, where `held` is how
many deliveries the caller holds unacknowledged and `limit` how many more it asks for.
A worker that asks for its free slots keeps a constant window (no extra round trip).

Lost connection: everything RabbitMQ delivered on it is back in its queue (flagged
redelivered), so the buffer is dropped, acks for deliveries of the old connection are
skipped (`generation`), and the next `receive` reconnects with backoff, declares its
queues again and resumes consuming.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from celeriac.brokers.amqp.frames import encode_acks
from celeriac.brokers.amqp.inbound import DeliveryReader, Received, received_from
from celeriac.connections.amqp import (
    AMQPParams,
    Backoff,
    close_connection,
    is_channel_error,
    is_connection_error,
    is_permanent_refusal,
    open_connection,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

    import amqp

__all__ = ["Consumer", "RawDelivery"]

logger = logging.getLogger(__name__)

# AMQP prefetch_count is a 16-bit field; 0 would mean "unlimited".
MAX_PREFETCH = 65535
# Right after a basic.consume RabbitMQ sends a burst of up to the window; a receive that
# started the consumer takes the rest of it until this long passes with nothing new (at
# most FIRST_WINDOW_MAX), so a process that starts a task at once has its whole first
# window in hand (and listed by `inspect reserved`), not one delivery and a connection
# holding the others until its next fetch.
FIRST_WINDOW_QUIET = 0.02
FIRST_WINDOW_MAX = 0.25

# (queue, message, generation)
RawDelivery = tuple[str, Received, int]


class Consumer:
    """Consumes from RabbitMQ for one broker object.

    Args:
        params: Where to connect.
        declare: Declares one queue on a channel (the broker's layout).
        retry_interval_max: Longest pause between reconnection attempts.
        consume_arguments: `basic.consume` arguments (e.g. `x-consumer-timeout`).
    """

    def __init__(
        self,
        params: AMQPParams,
        *,
        declare: Callable[[amqp.Channel, str], None],
        retry_interval_max: float = 5.0,
        consume_arguments: dict[str, Any] | None = None,
        global_qos: bool = True,
    ) -> None:
        self._params = params
        self._global_qos = global_qos
        self._declare = declare
        self._consume_arguments = consume_arguments or None
        self._lock = threading.Lock()
        self._connection: amqp.Connection | None = None
        self._channel: amqp.Channel | None = None
        self._host_index = 0
        #: Bumped on every new connection; deliveries of older ones cannot be acked.
        self.generation = 0
        self._reader: DeliveryReader | None = None
        # Set while the buffer may hold deliveries of a consumer RabbitMQ cancelled.
        self._orphans = False
        # Set when a receive issued a basic.consume (see FIRST_WINDOW_QUIET).
        self._consumed_now = False
        self._buffer: deque[tuple[str, Received]] = deque()
        self._tags: dict[str, str] = {}  # queue -> consumer tag
        self._queue_of: dict[str, str] = {}  # consumer tag -> queue
        self._prefetch = 0
        self._held: set[int] = set()
        self._backoff = Backoff(maximum=retry_interval_max)
        self._next_attempt = 0.0
        self._down_since: float | None = None
        # Bumped by close(): a receive waiting in another thread returns.
        self._epoch = 0
        self._wake_r = self._wake_w = -1

    # -- public --------------------------------------------------------------------------

    def receive(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[RawDelivery]:
        """Up to `limit` deliveries from `queues`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        wanted = list(dict.fromkeys(queues))
        epoch = self._epoch
        started = False
        while True:
            if self._connection is None:
                # Connect outside the lock: acks and heartbeats from other threads must
                # not wait for a connection attempt to time out.
                self._connect()
            with self._lock:
                if self._wake_r < 0:
                    self._open_pipe()
                got = self._receive_locked(wanted, limit)
                started, self._consumed_now = started or self._consumed_now, False
            if got:
                if started and len(got) < limit:
                    got += self._rest_of_first_window(wanted, limit - len(got))
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._epoch != epoch:
                return []
            self._wait(remaining)

    def _rest_of_first_window(self, queues: list[str], limit: int) -> list[RawDelivery]:
        more: list[RawDelivery] = []
        deadline = time.monotonic() + FIRST_WINDOW_MAX
        while len(more) < limit and (remaining := deadline - time.monotonic()) > 0:
            connection = self._connection
            if connection is None or not self._has_bytes(
                connection.sock, min(remaining, FIRST_WINDOW_QUIET)
            ):
                break
            with self._lock:
                more += self._receive_locked(queues, limit - len(more))
        return more

    def stop(self) -> None:
        """Cancel every consumer and return what was prefetched but not handed out; the
        deliveries already handed out stay held (ack or reject them as usual)."""
        with self._lock:
            if self._connection is None or self._channel is None:
                return
            try:
                self._sync_consumers([])
            except Exception as exc:  # the connection is gone: RabbitMQ requeues anyway
                self._failed(exc, "stop consuming")

    def ack(self, generation: int, tags: Collection[int]) -> int:
        """Ack deliveries of `generation`; return how many could be acked.

        Contiguous runs collapse into one `basic.ack(multiple=True)`: that is correct
        only when no other unacked delivery of the channel lies below the run's top,
        so tags held by the caller or still in the buffer break the run.
        """
        with self._lock:
            if not self._usable(generation):
                return 0
            wanted = {tag for tag in tags if tag in self._held}
            if not wanted:
                return 0
            others = (self._held - wanted) | {m.delivery_tag for _, m in self._buffer}
            floor = min(others) if others else None
            ordered = sorted(wanted)
            below = [tag for tag in ordered if floor is None or tag < floor]
            rest = ordered[len(below) :]
            acks = [(below[-1], len(below) > 1)] if below else []
            acks += [(tag, False) for tag in rest]
            try:
                self._write_acks(acks)
            except Exception as exc:
                self._failed(exc, "ack")
                return 0
            self._held -= wanted
            return len(wanted)

    def _write_acks(self, acks: list[tuple[int, bool]]) -> None:
        # One write for them all: tasks finishing out of order (hundreds of greenlets
        # or threads) leave most acks single, one `sendall` each through py-amqp.
        channel, connection = self._channel, self._connection
        assert channel is not None
        assert connection is not None
        if len(acks) == 1:
            channel.basic_ack(acks[0][0], multiple=acks[0][1])
            return
        connection.transport.write(encode_acks(channel.channel_id, acks))
        # What py-amqp's own writer counts, so heartbeat_tick sees the traffic.
        connection.bytes_sent += 1

    def reject(self, generation: int, tags: Collection[int], *, requeue: bool) -> int:
        """Reject deliveries of `generation` (back to the queue, or dropped)."""
        with self._lock:
            if not self._usable(generation):
                return 0
            assert self._channel is not None
            done = 0
            try:
                for tag in tags:
                    if tag in self._held:
                        self._channel.basic_reject(tag, requeue=requeue)
                        self._held.discard(tag)
                        done += 1
            except Exception as exc:
                self._failed(exc, "reject")
            return done

    def keep_alive(self) -> None:
        """Read pending frames and send a heartbeat if due (from any thread)."""
        with self._lock:
            if self._connection is None:
                return
            before = len(self._buffer)
            try:
                assert self._reader is not None
                self._reader.drain()
                self._connection.heartbeat_tick()
            except Exception as exc:
                self._failed(exc, "heartbeat")
                return
            if len(self._buffer) > before:
                self._wake()

    def close(self) -> None:
        """Close the connection: RabbitMQ requeues everything not acked. A later
        `receive` connects again."""
        self._epoch += 1
        self._wake()
        with self._lock:
            self._drop_connection()
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._wake_r = self._wake_w = -1

    def _open_pipe(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    @property
    def connected(self) -> bool:
        return self._connection is not None

    @property
    def negotiated_heartbeat(self) -> float:
        connection = self._connection
        return float(connection.heartbeat or 0) if connection is not None else 0.0

    # -- receive internals -------------------------------------------------------------

    def _receive_locked(self, queues: list[str], limit: int) -> list[RawDelivery]:
        if self._connection is None:
            return []
        if limit > 0:
            try:
                # The window first: a consumer started before it would get everything
                # (prefetch 0 means unlimited).
                self._sync_qos(min(MAX_PREFETCH, len(self._held) + limit))
                self._sync_consumers(queues)
            except Exception as exc:
                self._failed(exc, "declare")
                if is_connection_error(exc):
                    return []
                # A declaration RabbitMQ refused (406 and friends): the caller must know.
                raise
        try:
            assert self._connection is not None
            assert self._reader is not None
            self._reader.drain()
            self._connection.heartbeat_tick()
        except Exception as exc:
            self._failed(exc, "receive")
            if is_connection_error(exc) or is_channel_error(exc):
                return []
            raise
        return self._take(queues, limit)

    def _connect(self) -> None:
        """Open a connection if the backoff allows; install it under the lock."""
        now = time.monotonic()
        if now < self._next_attempt:
            return
        try:
            connection, index = open_connection(self._params, start=self._host_index)
            channel = connection.channel()
        except Exception as exc:
            delay = self._backoff.next_delay()
            self._next_attempt = time.monotonic() + delay
            if self._down_since is None:
                self._down_since = now
            logger.warning(
                "cannot connect to RabbitMQ at %s to consume (%s); retrying in %.1f s",
                self._params.describe(self._host_index),
                exc,
                delay,
            )
            self._host_index += 1
            if is_permanent_refusal(exc):
                raise
            return
        channel.auto_decode = False
        with self._lock:
            if self._connection is not None:  # pragma: no cover - one receiving thread
                close_connection(connection, timeout=0.5)
                return
            self._connection, self._channel, self._host_index = connection, channel, index
            self._reader = DeliveryReader(connection, channel, self._on_received)
            self.generation += 1
            self._prefetch = 0
        self._backoff.reset()
        if self._down_since is not None:
            logger.warning(
                "reconnected to RabbitMQ at %s after %.1f s; consuming again",
                self._params.describe(index),
                time.monotonic() - self._down_since,
            )
            self._down_since = None

    def _sync_consumers(self, queues: list[str]) -> None:
        channel = self._channel
        assert channel is not None
        for queue in [q for q in self._tags if q not in queues]:
            tag = self._tags.pop(queue)
            self._queue_of.pop(tag, None)
            channel.basic_cancel(tag)
            # What was prefetched for it goes back to the queue.
            kept: deque[tuple[str, Received]] = deque()
            for item in self._buffer:
                if item[0] == queue:
                    channel.basic_reject(item[1].delivery_tag, requeue=True)
                else:
                    kept.append(item)
            self._buffer = kept
        for queue in queues:
            if queue in self._tags:
                continue
            self._declare(channel, queue)
            self._consumed_now = True
            tag = channel.basic_consume(
                queue,
                callback=self._on_message,
                on_cancel=self._on_cancel,
                no_ack=False,
                arguments=self._consume_arguments,
            )
            self._tags[queue] = tag
            self._queue_of[tag] = queue

    def _sync_qos(self, prefetch: int) -> None:
        if prefetch != self._prefetch:
            assert self._channel is not None
            # Celery compat: global=True is RabbitMQ's per-channel limit, what Celery
            # uses with classic queues; it also applies at once to existing consumers.
            # Quorum queues refuse it: then the window is per consumer, set before each
            # basic.consume (Celery 5.5 does the same).
            self._channel.basic_qos(0, prefetch, self._global_qos)
            self._prefetch = prefetch

    def _take(self, queues: list[str], limit: int) -> list[RawDelivery]:
        buffer = self._buffer
        if not buffer or limit <= 0:
            return []
        wanted = set(queues)
        generation = self.generation
        taken: list[RawDelivery] = []
        if not self._orphans and wanted.issuperset(self._tags):
            # Every buffered delivery is for a wanted queue (the usual case): the oldest
            # go, the rest stay in place (a window of them waits here while a gevent
            # worker's greenlets are busy).
            for _ in range(min(limit, len(buffer))):
                queue, message = buffer.popleft()
                taken.append((queue, message, generation))
        else:
            kept: deque[tuple[str, Received]] = deque()
            while buffer:
                queue, message = buffer.popleft()
                if len(taken) < limit and queue in wanted:
                    taken.append((queue, message, generation))
                else:
                    kept.append((queue, message))
            self._buffer = kept
            self._orphans = any(queue not in self._tags for queue, _ in kept)
        self._held.update(message.delivery_tag for _, message, _ in taken)
        return taken

    def _on_message(self, message: amqp.Message) -> None:
        # A delivery py-amqp read (TLS, or one whose frames arrived in pieces).
        self._on_received(received_from(message))

    def _on_received(self, message: Received) -> None:
        queue = self._queue_of.get(message.consumer_tag)
        if queue is None:
            # Arrived for a consumer we just cancelled: RabbitMQ redelivers it later.
            assert self._channel is not None
            self._channel.basic_reject(message.delivery_tag, requeue=True)
            return
        self._buffer.append((queue, message))

    def _on_cancel(self, consumer_tag: str) -> None:
        # RabbitMQ cancelled the consumer (queue deleted): declare and consume again
        # on the next receive.
        queue = self._queue_of.pop(consumer_tag, None)
        if queue is not None:
            self._tags.pop(queue, None)
            self._orphans = True
            logger.warning("RabbitMQ cancelled the consumer of queue %r (deleted?)", queue)

    def _wait(self, remaining: float) -> None:
        connection = self._connection
        if connection is None:
            # Disconnected: sleep until the next reconnection attempt (or a wake-up).
            pause = max(0.0, min(remaining, self._next_attempt - time.monotonic()))
            self._select([], pause)
            return
        self._has_bytes(connection.sock, remaining)

    def _has_bytes(self, sock: Any, timeout: float) -> bool:
        """Wait up to `timeout` (or a wake-up) for `sock` to have bytes to read."""
        pending = getattr(sock, "pending", None)
        if pending is not None and pending():
            return True  # TLS: decrypted bytes already wait inside the SSL object
        return self._select([sock], timeout)

    def _select(self, socks: list[Any], timeout: float) -> bool:
        """Wait on `socks` and the wake-up pipe; whether one of `socks` is readable."""
        if self._wake_r < 0:
            return False
        try:
            readable, _, _ = select.select([*socks, self._wake_r], [], [], timeout)
        except (OSError, ValueError):
            return False  # the socket was closed under us: the next receive notices
        if self._wake_r in readable:
            readable.remove(self._wake_r)
            with contextlib.suppress(OSError):
                while os.read(self._wake_r, 512):
                    pass
        return bool(readable)

    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    # -- failures ----------------------------------------------------------------------

    def _usable(self, generation: int) -> bool:
        if generation != self.generation or self._channel is None:
            logger.debug(
                "delivery of an earlier connection: RabbitMQ has already requeued it; "
                "skipping the ack/reject"
            )
            return False
        return True

    def _failed(self, exc: BaseException, during: str) -> None:
        """The connection or the channel broke: drop both; the next receive reconnects.

        Everything unacked on them is requeued by RabbitMQ, so the buffer goes too.
        """
        text = str(exc)
        if "acknowledgement" in text and "timed out" in text:
            logger.error(
                "RabbitMQ closed the consumer channel because a delivery was not acked "
                "within its consumer_timeout (default 30 min): the message is redelivered. "
                "Raise consumer_timeout in rabbitmq.conf for tasks that run longer (%s)",
                text,
            )
        elif is_connection_error(exc) or is_channel_error(exc):
            logger.warning("lost the RabbitMQ consumer connection during %s: %s", during, text)
        else:
            logger.error(
                "unexpected error on the RabbitMQ consumer during %s", during, exc_info=True
            )
        if self._down_since is None:
            self._down_since = time.monotonic()
        # Only a channel error leaves a connection worth closing politely.
        self._drop_connection(polite=is_channel_error(exc) and not is_connection_error(exc))

    def _drop_connection(self, *, polite: bool = True) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._reader = None
        self._orphans = False
        self._buffer.clear()
        self._tags.clear()
        self._queue_of.clear()
        self._held.clear()
        self._prefetch = 0
        self.generation += 1
        self._next_attempt = 0.0
        close_connection(connection, timeout=0.5, polite=polite)
