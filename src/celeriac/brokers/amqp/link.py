"""Publishing connections of the RabbitMQ broker: one `Link` per connection, pooled.

py-amqp is not thread-safe, so a connection serves one thread at a time: a producer
thread takes a `Link` from the `LinkPool`, publishes on its confirm-mode channel,
waits for the broker's confirms and gives it back. The pool grows up to `limit`
connections (Celery's `broker_pool_limit`, 10) and reuses the most recently used one.

A `Link` also has a spare "admin" channel for operations that RabbitMQ may answer by
closing the channel (a passive declare of a missing queue, `basic.get` for dead
letters), so that such an error never disturbs the confirm channel.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from celeriac.brokers.amqp.frames import encode_publish
from celeriac.connections.amqp import (
    AMQPParams,
    close_connection,
    is_connection_error,
    open_connection,
)
from celeriac.connections.amqp_transport import drain, drain_nowait, is_timeout
from celeriac.exceptions import PublishError

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Sequence

    import amqp

__all__ = ["Link", "LinkLost", "LinkPool", "Outbound", "Returned"]

logger = logging.getLogger(__name__)

# Write a batch to the socket in pieces of about this many bytes.
WRITE_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message ready for `basic.publish`."""

    exchange: str
    routing_key: str
    message: amqp.Message
    mandatory: bool
    # What must be declared on the connection before publishing (see AMQPBroker).
    needs: tuple[Hashable, ...] = ()
    # For error messages: the task id, if the message is a task.
    label: str = ""


@dataclass(frozen=True, slots=True)
class Returned:
    """A mandatory message RabbitMQ could not route (`basic.return`)."""

    exchange: str
    routing_key: str
    message: amqp.Message
    reply_text: str


class LinkLost(Exception):  # internal signal, never escapes the broker
    """The connection failed while publishing; `unconfirmed` must be published again."""

    def __init__(
        self, unconfirmed: list[Outbound], cause: BaseException, *, blocked: str | None = None
    ) -> None:
        super().__init__(str(cause))
        self.unconfirmed = unconfirmed
        self.cause = cause
        #: Why RabbitMQ had blocked publishing on the connection, if it had.
        self.blocked = blocked


class Link:
    """One publishing connection with a confirm-mode channel.

    Args:
        params: Where to connect.
        start: Index of the host to try first (failover rotation).
        write_timeout: Longest a socket write may block (a blocked connection).
    """

    def __init__(
        self, params: AMQPParams, *, start: int = 0, write_timeout: float | None = None
    ) -> None:
        self.params = params
        self.blocked_reason: str | None = None
        self.connection, self.host_index = open_connection(
            params,
            start=start,
            on_blocked=self._on_blocked,
            on_unblocked=self._on_unblocked,
            write_timeout=write_timeout,
        )
        #: Declarations already made on this connection (cleared with the channel).
        self.declared: set[Hashable] = set()
        self._channel: amqp.Channel | None = None
        self._admin: amqp.Channel | None = None
        # Publisher confirms: sequence numbers are 1, 2, ... per channel, after
        # confirm.select. Every number from `_low` to `_next - 1` not yet confirmed is
        # in `_pending`; a multiple ack clears a whole prefix.
        self._next = 1
        self._low = 1
        self._pending: set[int] = set()
        self._nacked: set[int] = set()
        self._returned: list[Returned] = []
        self.last_used = time.monotonic()
        self.epoch = 0
        #: Set when the connection cannot be trusted any more (closed on release).
        self.broken = False

    def describe(self) -> str:
        return self.params.describe(self.host_index)

    # -- channels ----------------------------------------------------------------------

    @property
    def channel(self) -> amqp.Channel:
        """The confirm-mode channel (opened on first use)."""
        if self._channel is None or not self._channel.is_open:
            channel = self.connection.channel()
            channel.auto_decode = False
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            channel.events["basic_return"].add(self._on_return)
            self._channel = channel
            self._next = self._low = 1
            self._pending.clear()
            self._nacked.clear()
            self._returned.clear()
            self.declared.clear()
        return self._channel

    def admin(self) -> amqp.Channel:
        """A plain channel for operations that may close it (opened on first use)."""
        if self._admin is None or not self._admin.is_open:
            channel = self.connection.channel()
            channel.auto_decode = False
            self._admin = channel
        return self._admin

    def reset_admin(self) -> None:
        """Forget the admin channel after RabbitMQ closed it (or to drop its unacked
        messages back into their queue)."""
        channel, self._admin = self._admin, None
        _close_channel(channel, "admin")

    def reset_channel(self) -> None:
        """Forget the confirm channel after a channel error; the next use reopens it."""
        channel, self._channel = self._channel, None
        self.declared.clear()
        _close_channel(channel, "confirm")

    # -- confirms ----------------------------------------------------------------------

    def _on_ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            for seq in range(self._low, tag + 1):
                self._pending.discard(seq)
            self._low = max(self._low, tag + 1)
        else:
            self._pending.discard(tag)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        if multiple:
            for seq in range(self._low, tag + 1):
                if seq in self._pending:
                    self._pending.discard(seq)
                    self._nacked.add(seq)
            self._low = max(self._low, tag + 1)
        else:
            self._pending.discard(tag)
            self._nacked.add(tag)

    def _on_return(
        self, exc: BaseException, exchange: str, routing_key: str, message: amqp.Message
    ) -> None:
        self._returned.append(Returned(exchange, routing_key, message, str(exc)))

    def _on_blocked(self, reason: str) -> None:
        self.blocked_reason = reason or "blocked"
        logger.warning("RabbitMQ blocked publishing on %s: %s", self.describe(), reason)

    def _on_unblocked(self) -> None:
        self.blocked_reason = None
        logger.info("RabbitMQ unblocked publishing on %s", self.describe())

    # -- publishing --------------------------------------------------------------------

    def publish_all(self, items: Sequence[Outbound], *, timeout: float) -> list[Returned]:
        """Publish `items` and wait until RabbitMQ confirmed every one of them.

        Returns the mandatory messages RabbitMQ could not route (confirmed too, but not
        queued); the caller declares their queues and sends them again.

        Raises:
            LinkLost: the connection failed; the unconfirmed items are attached.
            PublishError: RabbitMQ refused (nack) some, or did not confirm in `timeout`.
        """
        channel = self.channel
        self.last_used = time.monotonic()
        # Encode everything first: a bad value fails the batch before a byte is sent.
        frames = [
            encode_publish(
                channel.channel_id,
                item.exchange,
                item.routing_key,
                item.message,
                mandatory=item.mandatory,
                frame_max=self.connection.frame_max,
            )
            for item in items
        ]
        sent: dict[int, Outbound] = {}
        try:
            chunk: list[bytes] = []
            size = 0
            for item, data in zip(items, frames, strict=True):
                # Numbered before the write: if the write fails midway, the chunk is
                # in doubt and goes out again on the next connection.
                seq = self._next
                self._next += 1
                self._pending.add(seq)
                sent[seq] = item
                chunk.append(data)
                size += len(data)
                if size >= WRITE_CHUNK:
                    self._write(chunk)
                    chunk, size = [], 0
            if chunk:
                self._write(chunk)
            self._wait_confirms(timeout)
        except Exception as exc:
            if is_connection_error(exc) and not is_timeout(exc):
                unconfirmed = [item for seq, item in sent.items() if seq in self._pending]
                unconfirmed.extend(items[len(sent) :])
                raise LinkLost(unconfirmed, exc, blocked=self.blocked_reason) from exc
            raise
        finally:
            returned, self._returned = self._returned, []
        if self._nacked:
            refused = [sent[seq] for seq in sorted(self._nacked) if seq in sent]
            self._nacked.clear()
            labels = ", ".join(item.label or item.routing_key for item in refused[:5])
            raise PublishError(
                f"RabbitMQ refused {len(refused)} of {len(items)} message(s) ({labels}): "
                "nothing was queued for them; a queue may be full (x-overflow "
                "reject-publish) or RabbitMQ is failing internally (see its log)"
            )
        return returned

    def _write(self, chunk: list[bytes]) -> None:
        self.connection.transport.write(b"".join(chunk))
        # What py-amqp's own writer counts, so heartbeat_tick sees the traffic.
        self.connection.bytes_sent += 1

    def _wait_confirms(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pending = len(self._pending)
                # The channel's numbering cannot be trusted after giving up on it, and
                # a blocked server would not even answer a channel.close: drop the
                # whole connection when the link goes back to the pool.
                self.broken = True
                why = f" (connection blocked: {self.blocked_reason})" if self.blocked_reason else ""
                raise PublishError(
                    f"RabbitMQ did not confirm {pending} message(s) within {timeout:g} s"
                    f"{why}; they may or may not have been queued"
                )
            if not drain(self.connection, min(remaining, 1.0)):
                # A link that died while idle (not yet noticed by the keep-alive tick)
                # is given up after two missed heartbeats, not after `timeout`: the
                # caller then publishes the unconfirmed messages on a fresh link.
                self.connection.heartbeat_tick()

    # -- keep-alive ----------------------------------------------------------------------

    def tick(self) -> None:
        """Read what the server sent (heartbeats, close) and send a heartbeat if due."""
        drain_nowait(self.connection)
        self.connection.heartbeat_tick()

    def close(self, *, polite: bool = True) -> None:
        close_connection(self.connection, polite=polite)


class LinkPool:
    """At most `limit` publishing connections shared by the threads of one process."""

    def __init__(self, factory: Callable[[], Link], *, limit: int) -> None:
        if limit < 1:
            raise ValueError("pool limit must be at least 1")
        self._factory = factory
        self._limit = limit
        self._idle: list[Link] = []
        self._count = 0
        # Bumped by close(): links opened before it are closed when they come back.
        self._epoch = 0
        self._cond = threading.Condition()

    def acquire(self, *, timeout: float | None = None) -> Link:
        """An idle link, a new one if under the limit, or wait for one to come back.

        Raises:
            PublishError: every link stayed busy for `timeout` seconds.
            Exception: the driver's error when a new connection cannot be opened.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._count < self._limit:
                    self._count += 1
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise PublishError(
                        f"all {self._limit} RabbitMQ connections stayed busy for {timeout:g} s; "
                        "raise the pool limit (transport option pool_limit)"
                    )
                self._cond.wait(remaining)
        try:
            link = self._factory()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise
        link.epoch = self._epoch
        return link

    def release(self, link: Link, *, broken: bool = False) -> None:
        """Give a link back; a broken (or pre-`close`) one is closed and forgotten."""
        with self._cond:
            drop = broken or link.epoch != self._epoch
            if drop:
                self._count -= 1
            else:
                self._idle.append(link)
            self._cond.notify()
        if drop:
            link.close(polite=not broken)

    def discard_idle(self) -> None:
        """Close every idle link (after an outage they are most likely dead too)."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cond.notify_all()
        for link in idle:
            link.close()

    def tick_idle(self) -> None:
        """Keep idle links alive (heartbeats); drop the ones that died."""
        with self._cond:
            idle, self._idle = self._idle, []
        alive: list[Link] = []
        dead: list[Link] = []
        for link in idle:
            try:
                link.tick()
            except Exception as exc:  # any failure means the link is dead
                logger.debug("idle RabbitMQ connection died: %s", exc)
                dead.append(link)
            else:
                alive.append(link)
        with self._cond:
            # Put them back under the ones used meanwhile: least recently used at the bottom.
            self._idle[:0] = alive
            self._count -= len(dead)
            self._cond.notify_all()
        for link in dead:
            link.close(polite=False)

    def close(self) -> None:
        """Close every connection (those in use when they come back); the pool stays
        usable and opens new ones on demand."""
        with self._cond:
            self._epoch += 1
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cond.notify_all()
        for link in idle:
            link.close()

    @property
    def size(self) -> int:
        with self._cond:
            return self._count


def _close_channel(channel: amqp.Channel | None, which: str) -> None:
    """Close a channel that is still open; a lost connection is raised, any other
    failure only logged (the channel is forgotten either way)."""
    if channel is not None and channel.is_open:
        try:
            channel.close()
        except Exception as exc:
            if is_connection_error(exc):
                raise
            logger.debug("error closing the %s channel", which, exc_info=True)
