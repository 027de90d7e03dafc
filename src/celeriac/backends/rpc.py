"""The `rpc://` result backend: results sent back as AMQP messages, as Celery's `rpc://`.

Wire format (spec §4.6), the same in both directions with stock Celery:

- the client declares its reply queue, named after its `reply_to` (Celery uses
  `app.thread_oid`): durable, auto-delete, `x-expires` = `result_expires` in ms
  (what Celery 5.7 declares), before it sends tasks;
- a worker publishes every state (STARTED, RETRY, custom, final) to the default
  exchange with routing key = the task's `reply_to` and `correlation_id` = the task id,
  the body being the result meta (`{"task_id", "status", "result", "traceback",
  "children", ...}`; Celery 5.7 adds `date_done`, `group_id`, `parent_id` and the
  extended fields: all accepted), delivery_mode 1 (2 with transport option
  `persistent`), no declaration;
- the client consumes its queue (no ack, like Celery) and keeps the latest state per
  task id in memory, so results for other tasks wait until asked for.

What Celery's rpc backend cannot do, this one cannot either: results live only in the
client that sent the task (another process cannot read them; they are lost if the
client's connection drops, since the queue is auto-delete); `forget` only drops the
local copy; groups cannot be saved (`NotImplementedError`) and chords are refused
(`supports_native_join` is False, `NotImplementedError` with Celery's message).

Transport options: `broker_url` (the AMQP URL; default: the rpc URL's host part, or
`amqp://guest:guest@localhost:5672//`), `reply_to` (the reply queue; default a
Celery-style oid unique to this backend object), `persistent`, `max_buffered`
(results kept in memory, default 10000), and the AMQP options of the broker
(`heartbeat`, `connect_timeout`, `ssl`, `publish_retry_timeout`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, ClassVar

import amqp

from celeriac import states
from celeriac.backends.base import ChordPart, ResultBackend, ResultMeta
from celeriac.connections.amqp import (
    Backoff,
    KeepAlive,
    close_connection,
    is_connection_error,
    is_permanent_refusal,
    keepalive_interval,
    open_connection,
    parse_amqp_url,
)
from celeriac.connections.amqp_transport import drain, drain_nowait
from celeriac.exceptions import BackendError, ResultTimeout, SerializationError
from celeriac.protocol.serializers import loads

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["RPCBackend"]

logger = logging.getLogger(__name__)

DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672//"
DEFAULT_MAX_BUFFERED = 10000
DEFAULT_RETRY_TIMEOUT = 10.0
CONFIRM_TIMEOUT = 30.0

# Celery compat: the text Celery raises when a chord meets the rpc backend.
E_NO_CHORD_SUPPORT = (
    'The "rpc" result backend does not support chords!\n\n'
    "Note that a group chained with a task is also upgraded to be a chord,\n"
    "as this pattern requires synchronization.\n\n"
    "Result backends that supports chords: Redis, Database, Memcached, and more."
)


def default_oid(owner: object) -> str:
    """A reply queue name in the style of Celery's `app.thread_oid` (uuid3 of node,
    process, thread and object)."""
    node = f"{uuid.getnode():x}-{os.getpid():x}-{threading.get_ident():x}-{id(owner):x}"
    return str(uuid.uuid3(uuid.NAMESPACE_OID, node))


def _amqp_url_of(url: str) -> str:
    """`rpc://user:pass@host:port/vhost` → the same AMQP URL; bare `rpc://` → default."""
    rest = url.partition("://")[2]
    if not rest.strip("/"):
        return DEFAULT_AMQP_URL
    return "amqp://" + rest


class RPCBackend(ResultBackend):
    """Celery's `rpc://` result backend on RabbitMQ."""

    schemes: ClassVar[tuple[str, ...]] = ("rpc",)
    supports_native_join: ClassVar[bool] = False
    supports_lookup: ClassVar[bool] = False

    def __init__(self, url: str = "rpc://", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        opts = self.transport_options
        broker_url = str(opts.get("broker_url") or _amqp_url_of(url))
        self._params = parse_amqp_url(broker_url, opts)
        #: The queue this client reads its results from (the tasks' `reply_to`).
        self.reply_to: str = str(opts.get("reply_to") or default_oid(self))
        self.persistent = bool(opts.get("persistent", False))
        self._max_buffered = int(opts.get("max_buffered", DEFAULT_MAX_BUFFERED))
        self._retry_timeout = float(opts.get("publish_retry_timeout", DEFAULT_RETRY_TIMEOUT))
        self._results: OrderedDict[str, ResultMeta] = OrderedDict()
        self._cond = threading.Condition()
        # Consuming side (the client).
        self._consume_lock = threading.Lock()
        self._consumer: amqp.Connection | None = None
        self._consumer_channel: amqp.Channel | None = None
        self._consuming = False
        self._declared = False
        self._next_attempt = 0.0
        self._backoff = Backoff()
        # Publishing side (the worker).
        self._publish_lock = threading.Lock()
        self._publisher: amqp.Connection | None = None
        self._publisher_channel: amqp.Channel | None = None
        self._keepalive: KeepAlive | None = None
        self._keepalive_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        with self._keepalive_lock:
            keepalive, self._keepalive = self._keepalive, None
        if keepalive is not None:
            keepalive.stop()
        with self._consume_lock:
            self._drop_consumer()
        with self._publish_lock:
            self._drop_publisher()

    def _start_keepalive(self, connection: amqp.Connection) -> None:
        if self._keepalive is not None or not connection.heartbeat:
            return
        # Both the publishing and the consuming side may get here first.
        with self._keepalive_lock:
            if self._keepalive is None:
                self._keepalive = KeepAlive(
                    self._tick,
                    interval=keepalive_interval(float(connection.heartbeat)),
                    name="celeriac-rpc",
                )
                self._keepalive.start()

    def _tick(self) -> None:
        # Whoever holds a lock is using that connection, which keeps it alive.
        if self._consume_lock.acquire(blocking=False):
            try:
                if self._consumer is not None:
                    try:
                        self._read(timeout=0)
                        self._consumer.heartbeat_tick()
                    except Exception as exc:
                        self._consumer_failed(exc)
            finally:
                self._consume_lock.release()
        if self._publish_lock.acquire(blocking=False):
            try:
                if self._publisher is not None:
                    try:
                        drain_nowait(self._publisher)
                        self._publisher.heartbeat_tick()
                    except Exception:
                        self._drop_publisher()
            finally:
                self._publish_lock.release()

    # -- storing (the worker side) -----------------------------------------------------

    def store_for_request(
        self, meta: ResultMeta, *, reply_to: str | None, correlation_id: str | None
    ) -> None:
        self.store(meta, reply_to=reply_to, correlation_id=correlation_id)

    def store(
        self,
        meta: ResultMeta,
        *,
        reply_to: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """Send `meta` to the client waiting for it.

        Args:
            meta: The state to send.
            reply_to: The task's `reply_to` property (the client's queue); defaults to
                this backend's own `reply_to`.
            correlation_id: The task's `correlation_id`; defaults to the task id.

        There is no store to deduplicate against: the client keeps the first final
        state it gets. A missing reply queue (client gone) drops the result, as in
        Celery.
        """
        routing_key = reply_to or self.reply_to
        message = amqp.Message(
            self.encode_meta(meta),
            content_type=self.serializer.content_type,
            content_encoding=self.serializer.content_encoding,
            correlation_id=correlation_id or meta.task_id,
            delivery_mode=2 if self.persistent else 1,
        )
        deadline = time.monotonic() + self._retry_timeout
        backoff = Backoff()
        while True:
            with self._publish_lock:
                try:
                    self._publish(message, routing_key)
                    return
                except (BackendError, SerializationError):
                    raise
                except Exception as exc:
                    self._drop_publisher()
                    if is_permanent_refusal(exc) or not is_connection_error(exc):
                        raise BackendError(
                            f"cannot send the result of {meta.task_id} over RabbitMQ: {exc}"
                        ) from exc
                    error = exc
            delay = backoff.next_delay()
            if time.monotonic() + delay > deadline:
                raise BackendError(
                    f"cannot reach RabbitMQ at {self._params.describe()} to send the result "
                    f"of {meta.task_id} (retried for {self._retry_timeout:g} s): {error}"
                ) from error
            logger.warning("rpc result publish failed (%s); retrying in %.1f s", error, delay)
            time.sleep(delay)

    def _publish(self, message: amqp.Message, routing_key: str) -> None:
        if self._publisher is None or self._publisher_channel is None:
            connection, _ = open_connection(self._params)
            channel = connection.channel()
            channel.confirm_select()
            self._publisher, self._publisher_channel = connection, channel
            self._start_keepalive(connection)
        channel = self._publisher_channel
        confirmed: list[bool] = []

        def on_ack(tag: int, multiple: bool) -> None:
            confirmed.append(True)

        def on_nack(tag: int, multiple: bool) -> None:
            confirmed.append(False)

        channel.events["basic_ack"].add(on_ack)
        channel.events["basic_nack"].add(on_nack)
        try:
            channel.basic_publish(message, exchange="", routing_key=routing_key)
            deadline = time.monotonic() + CONFIRM_TIMEOUT
            while not confirmed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._drop_publisher()
                    raise BackendError(
                        f"RabbitMQ did not confirm a result within {CONFIRM_TIMEOUT:g} s"
                    )
                drain(self._publisher, min(remaining, 1.0))
        finally:
            channel.events["basic_ack"].discard(on_ack)
            channel.events["basic_nack"].discard(on_nack)
        if not confirmed[0]:
            raise BackendError("RabbitMQ refused (nacked) a result message")

    def _drop_publisher(self) -> None:
        connection, self._publisher, self._publisher_channel = self._publisher, None, None
        close_connection(connection, timeout=0.5)

    # -- reading (the client side) -----------------------------------------------------

    def reply_queue(self) -> str | None:
        self.ensure_reply_queue()
        return self.reply_to

    def ensure_reply_queue(self) -> None:
        """Declare the reply queue (once); call before sending tasks whose results
        come back here, so that no result arrives before its queue exists."""
        if self._declared:
            return
        with self._consume_lock:
            self._ensure_consumer(consume=False)

    def get(self, task_id: str) -> ResultMeta | None:
        """The latest state received for `task_id` (reading what has arrived)."""
        self._pump(timeout=0)
        with self._cond:
            return self._results.get(task_id)

    def get_many(self, task_ids: Sequence[str]) -> dict[str, ResultMeta]:
        self._pump(timeout=0)
        with self._cond:
            return {tid: self._results[tid] for tid in task_ids if tid in self._results}

    def wait(self, task_id: str, *, timeout: float | None = None) -> ResultMeta:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                meta = self._results.get(task_id)
                if meta is not None and meta.is_ready:
                    return meta
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ResultTimeout(f"task {task_id} not ready after {timeout} s")
            step = 1.0 if remaining is None else min(remaining, 1.0)
            if not self._pump(timeout=step):
                # Another thread is reading the queue; it wakes us on every result.
                with self._cond:
                    if task_id not in self._results or not self._results[task_id].is_ready:
                        self._cond.wait(min(step, 0.1))

    def forget(self, task_id: str) -> None:
        """Drop the local copy (Celery compat: nothing is stored server-side)."""
        with self._cond:
            self._results.pop(task_id, None)

    def _pump(self, *, timeout: float) -> bool:
        """Read arrived results for up to `timeout` s; False if another thread reads."""
        if not self._consume_lock.acquire(blocking=False):
            return False
        try:
            if not self._ensure_consumer(consume=True):
                if timeout > 0:
                    time.sleep(min(timeout, max(0.0, self._next_attempt - time.monotonic())))
                return True
            try:
                self._read(timeout=timeout)
            except Exception as exc:
                self._consumer_failed(exc)
            return True
        finally:
            self._consume_lock.release()

    def _read(self, *, timeout: float) -> None:
        connection = self._consumer
        assert connection is not None
        if drain(connection, timeout):
            drain_nowait(connection)

    def _ensure_consumer(self, *, consume: bool) -> bool:
        """Connect, declare the reply queue and (with `consume`) start consuming."""
        if self._consumer is None:
            if time.monotonic() < self._next_attempt:
                return False
            try:
                connection, _ = open_connection(self._params)
                channel = connection.channel()
            except Exception as exc:
                if is_permanent_refusal(exc) or not is_connection_error(exc):
                    raise BackendError(
                        f"RabbitMQ at {self._params.describe()} refused the rpc backend: {exc}"
                    ) from exc
                self._next_attempt = time.monotonic() + self._backoff.next_delay()
                logger.warning("rpc backend cannot reach RabbitMQ: %s", exc)
                return False
            channel.auto_decode = False
            self._consumer, self._consumer_channel = connection, channel
            self._consuming = self._declared = False
            self._backoff.reset()
            self._start_keepalive(connection)
        channel = self._consumer_channel
        assert channel is not None
        try:
            if not self._declared:
                channel.queue_declare(
                    self.reply_to,
                    durable=True,
                    exclusive=False,
                    auto_delete=True,
                    arguments={"x-expires": int(self.expires * 1000)} if self.expires else None,
                )
                self._declared = True
            if consume and not self._consuming:
                channel.basic_consume(self.reply_to, callback=self._on_message, no_ack=True)
                self._consuming = True
        except Exception as exc:
            self._consumer_failed(exc)
            if is_connection_error(exc):
                return False
            raise BackendError(
                f"cannot declare the rpc reply queue {self.reply_to!r}: {exc}"
            ) from exc
        return True

    def _on_message(self, message: amqp.Message) -> None:
        props = message.properties
        body = message.body if isinstance(message.body, bytes) else bytes(message.body)
        try:
            value = loads(body, props.get("content_type"), accept=self.accept)
            if not isinstance(value, dict):
                raise BackendError("result message is not an object")
            meta = ResultMeta.from_dict(value, task_id=props.get("correlation_id"))
        except (SerializationError, BackendError) as exc:
            logger.error("dropping an undecodable rpc result message: %s", exc)
            return
        # Celery compat: the correlation id names the task; the body is the fallback.
        task_id = props.get("correlation_id") or meta.task_id
        with self._cond:
            current = self._results.get(task_id)
            if current is None or not _is_final_over(current, meta):
                self._results[task_id] = meta
                self._results.move_to_end(task_id)
                while len(self._results) > self._max_buffered:
                    dropped, _ = self._results.popitem(last=False)
                    logger.warning(
                        "rpc backend holds over %d unread results: dropped %s",
                        self._max_buffered,
                        dropped,
                    )
            self._cond.notify_all()

    def _consumer_failed(self, exc: BaseException) -> None:
        logger.warning(
            "lost the rpc result connection (%s): results sent meanwhile are lost "
            "(the reply queue is auto-delete, as in Celery)",
            exc,
        )
        self._drop_consumer()

    def _drop_consumer(self) -> None:
        connection, self._consumer, self._consumer_channel = self._consumer, None, None
        self._consuming = self._declared = False
        close_connection(connection, timeout=0.5)

    # -- groups and chords: not with rpc -------------------------------------------------

    def save_group(self, group_id: str, result: Any) -> None:
        # Celery compat: the rpc backend raises NotImplementedError here.
        raise NotImplementedError("save_group is not supported by the rpc:// result backend")

    def get_group(self, group_id: str) -> Any | None:
        raise NotImplementedError("restore_group is not supported by the rpc:// result backend")

    def delete_group(self, group_id: str) -> None:
        raise NotImplementedError("delete_group is not supported by the rpc:// result backend")

    def set_chord_size(self, group_id: str, size: int) -> None:
        raise NotImplementedError(E_NO_CHORD_SUPPORT)

    def chord_part_return(
        self,
        group_id: str,
        *,
        index: int | None,
        task_id: str,
        status: str,
        result: Any,
    ) -> list[ChordPart] | None:
        raise NotImplementedError(E_NO_CHORD_SUPPORT)

    def ensure_chords_allowed(self) -> None:
        """Raise Celery's error: chords need a backend that can join them."""
        raise NotImplementedError(E_NO_CHORD_SUPPORT)


def _is_final_over(current: ResultMeta, new: ResultMeta) -> bool:
    """True when `current` must be kept: a final state is not replaced by a later
    non-final one (a redelivered task's STARTED), and a SUCCESS by nothing."""
    if current.status == states.SUCCESS:
        return True
    return current.is_ready and not new.is_ready
