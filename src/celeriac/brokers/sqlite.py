"""SQLite broker (`sqlite:///path.db`): the embedded default, for every process of one machine.

Producers (any number of threads), worker processes and result readers share one file in
WAL mode. Every operation is one statement or one short write transaction: publish is one
INSERT, receive leases a whole batch with one `UPDATE … RETURNING`, ack is one DELETE.
A consumer waiting for work does not query in a loop: it waits on the process's
`ChangeWatcher` (a `PRAGMA data_version` poll every 10 ms while anybody waits), and for
the next instant a delayed message falls due or a lease lapses.

Not here: connection handling and fork safety (`celeriac.connections`), results
(`celeriac.backends.sqlite`).
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final

import orjson

from celeriac._crashpoints import crash_point
from celeriac._time import UTC, to_timestamp
from celeriac.brokers.base import (
    INVALID_ENVELOPE,
    Broker,
    DeadLetter,
    Delivery,
    Outgoing,
    clamp_priority,
)
from celeriac.connections.sqlite import (
    DEFAULT_BUSY_TIMEOUT,
    RATE_SLOT_SCHEMA,
    Database,
    parse_sqlite_url,
    reserve_rate_slot,
)
from celeriac.connections.sqlite_watch import DEFAULT_POLLING_INTERVAL, watcher_for
from celeriac.exceptions import (
    BrokerConnectionError,
    BrokerError,
    ImproperlyConfigured,
    PublishError,
    SerializationError,
)
from celeriac.protocol.message import Message
from celeriac.protocol.serializers import json_dumps, json_loads

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence

__all__ = ["SQLiteBroker"]

logger = logging.getLogger(__name__)

# -- storage layout --------------------------------------------------------------------
#
# `message` holds every message not yet acked, in one of three states:
#   due IS NULL                     ready: visible, served in `message_ready` order
#   due NOT NULL, owner IS NULL     delayed (ETA/countdown) until `due`
#   due NOT NULL, owner NOT NULL    leased to consumer `owner` until `due`
# A row whose `due` has passed (ETA reached, lease lapsed) is made ready again by the next
# receive ("promotion"), so the ready index only ever holds ready rows and a backlog of
# delayed messages costs nothing per receive. `deliveries` counts leases; the delivery tag
# is "<id>.<deliveries>", so the tag of a lease that lapsed and went to somebody else
# matches no row any more: a late ack, extend or reject from the first holder is a no-op.
# `headers` and `properties` are UTF-8 JSON (kombu's type tags for datetimes and the like).
SCHEMA: Final = (
    """
CREATE TABLE IF NOT EXISTS message (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    due REAL,
    owner TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    content_type TEXT NOT NULL,
    content_encoding TEXT NOT NULL,
    headers BLOB NOT NULL,
    properties BLOB NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS message_ready ON message (queue, priority DESC, id)
    WHERE due IS NULL;
CREATE INDEX IF NOT EXISTS message_due ON message (due) WHERE due IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead_letter (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    reason TEXT NOT NULL,
    failed_at REAL NOT NULL,
    priority INTEGER NOT NULL,
    deliveries INTEGER NOT NULL,
    crashes INTEGER NOT NULL,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    content_type TEXT NOT NULL,
    content_encoding TEXT NOT NULL,
    headers BLOB NOT NULL,
    properties BLOB NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letter_failed_at ON dead_letter (failed_at);
"""
    + RATE_SLOT_SCHEMA
)

_INSERT: Final = (
    "INSERT INTO message (queue, priority, due, exchange, routing_key, content_type, "
    "content_encoding, headers, properties, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Delayed messages that fell due and lapsed leases become ready (index `message_due`).
_PROMOTE: Final = "UPDATE message SET due = NULL, owner = NULL WHERE due <= ?"
_RESTORE_LAPSED: Final = (
    "UPDATE message SET due = NULL, owner = NULL WHERE due <= ? AND owner IS NOT NULL"
)
_LEASE_COLUMNS: Final = (
    "id, queue, priority, deliveries, crashes, exchange, routing_key, content_type, "
    "content_encoding, headers, properties, body"
)
_READY_IN_QUEUE: Final = (
    "SELECT id, priority FROM message WHERE queue = ? AND due IS NULL "
    "ORDER BY priority DESC, id LIMIT ?"
)
_NEXT_DUE: Final = "SELECT due FROM message WHERE due IS NOT NULL ORDER BY due LIMIT 1"
_ACK: Final = "DELETE FROM message WHERE id = ? AND deliveries = ?"
_REQUEUE: Final = "UPDATE message SET due = NULL, owner = NULL WHERE id = ? AND deliveries = ?"
_EXTEND: Final = "UPDATE message SET due = ? WHERE id = ? AND deliveries = ? AND owner IS NOT NULL"
_COUNT_CRASH: Final = "UPDATE message SET crashes = crashes + 1 WHERE id = ? AND deliveries = ?"
_RECOVER: Final = "UPDATE message SET due = NULL, owner = NULL WHERE due IS NOT NULL AND owner = ?"
_DEAD_LETTER: Final = (
    "INSERT INTO dead_letter (id, queue, reason, failed_at, priority, deliveries, crashes, "
    "exchange, routing_key, content_type, content_encoding, headers, properties, body) "
    "SELECT ?, queue, ?, ?, priority, deliveries, crashes, exchange, routing_key, "
    "content_type, content_encoding, headers, properties, body "
    "FROM message WHERE id = ? AND deliveries = ?"
)
_LIST_DEAD: Final = (
    "SELECT id, queue, reason, failed_at, content_type, content_encoding, headers, "
    "properties, body FROM dead_letter ORDER BY failed_at, rowid LIMIT ?"
)
_REPLAY_DEAD: Final = (
    "INSERT INTO message (queue, priority, due, exchange, routing_key, content_type, "
    "content_encoding, headers, properties, body) "
    "SELECT queue, priority, NULL, exchange, routing_key, content_type, content_encoding, "
    "headers, properties, body FROM dead_letter WHERE id = ?"
)
_SIZE: Final = (
    "SELECT (SELECT count(*) FROM message WHERE queue = :queue AND due IS NULL) + "
    "(SELECT count(*) FROM message WHERE due IS NOT NULL AND queue = :queue "
    "AND (owner IS NULL OR due <= :now))"
)


def _float_option(options: Mapping[str, Any], name: str, default: float) -> float:
    value = options.get(name, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(
            f"broker_transport_options[{name!r}] must be a number of seconds, got {value!r}"
        ) from None
    if number < 0:
        raise ImproperlyConfigured(f"broker_transport_options[{name!r}] must be >= 0")
    return number


class SQLiteBroker(Broker):
    """Messages in an SQLite file shared by the processes of one machine.

    Transport options (`broker_transport_options`):
        visibility_timeout: Seconds a lease lasts before the message is handed out again
            (default 300; the worker renews leases of running tasks).
        polling_interval: Seconds between checks for changes while waiting (default 0.01).
        busy_timeout: Seconds to wait for another process's write lock (default 30).
        synchronous: `normal` (default; survives process crashes) or `full` (also power
            loss, one fsync per commit).
    """

    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)
    supports_rate_limit: ClassVar[bool] = True
    # Long enough that lease renewals every visibility_timeout/3 survive stalls of a
    # minute or more (a busy 2-core box, a 30 s busy_timeout, GC); short enough that after
    # a whole worker is killed (no supervisor left to `recover`) its messages run again
    # within five minutes. A child's crash never waits for it: the supervisor recovers.
    default_visibility_timeout: ClassVar[float] = 300.0

    def __init__(self, url: str = "sqlite:///celeriac.db", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.path = parse_sqlite_url(url)
        options = self.transport_options
        if self.visibility_timeout <= 0:
            raise ImproperlyConfigured("broker_transport_options['visibility_timeout'] must be > 0")
        self.polling_interval = _float_option(options, "polling_interval", DEFAULT_POLLING_INTERVAL)
        self._db = Database(
            self.path,
            schema=SCHEMA,
            busy_timeout=_float_option(options, "busy_timeout", DEFAULT_BUSY_TIMEOUT),
            synchronous=str(options.get("synchronous", "normal")),
            error=BrokerError,
            locked_error=BrokerConnectionError,
            what="SQLite broker",
        )
        # Lease statements by number of queues (the statement cache keys on the text).
        self._lease_sql: dict[int, str] = {}
        self._peek_sql: dict[int, str] = {}

    # -- lifecycle -------------------------------------------------------------------

    def connect(self) -> None:
        self._db.connect()

    def close(self) -> None:
        self._db.close()

    # -- producing -------------------------------------------------------------------

    def declare(self, queue: str) -> None:
        # Queues are implicit (a column); declaring only makes sure the schema exists.
        self._db.connect()

    def _row(
        self,
        message: Message,
        queue: str,
        eta: datetime | None,
        priority: int | None,
        exchange: str,
        routing_key: str | None,
        now: float,
    ) -> tuple[Any, ...]:
        # Naive ETAs are UTC, as everywhere in celeriac; a past ETA is ready at once.
        due = to_timestamp(eta, now=now)
        if due is not None and due <= now:
            due = None
        return (
            queue,
            clamp_priority(message.priority if priority is None else priority),
            due,
            exchange,
            routing_key or queue,
            message.content_type,
            message.content_encoding,
            _dump_json(message.headers),
            _dump_json(message.properties),
            message.body,
        )

    def publish(
        self,
        message: Message,
        *,
        queue: str,
        eta: datetime | None = None,
        priority: int | None = None,
        exchange: str = "",
        routing_key: str | None = None,
    ) -> None:
        row = self._row(message, queue, eta, priority, exchange, routing_key, self.clock.time())
        try:
            with self._db.use() as connection:
                connection.execute(_INSERT, row)
        except BrokerConnectionError:
            raise
        except BrokerError as exc:
            raise PublishError(f"message {message.task_id} was not queued: {exc}") from exc
        self._published += 1

    def publish_many(self, items: Sequence[Outgoing]) -> None:
        """Publish every item in one transaction: all are queued, or none."""
        if not items:
            return
        now = self.clock.time()
        rows = [
            self._row(
                item.message,
                item.queue,
                item.eta,
                item.priority,
                item.exchange,
                item.routing_key,
                now,
            )
            for item in items
        ]
        try:
            with self._db.transaction() as connection:
                connection.executemany(_INSERT, rows)
        except BrokerConnectionError:
            raise
        except BrokerError as exc:
            raise PublishError(f"{len(rows)} messages were not queued: {exc}") from exc
        self._published += len(rows)

    # -- consuming -------------------------------------------------------------------

    def receive(self, queues: Sequence[str], *, limit: int, timeout: float) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        deadline = time.monotonic() + timeout
        taken = self._lease(queues, limit)
        if taken or timeout <= 0:
            return taken
        watcher = watcher_for(self.path, interval=self.polling_interval)
        while True:
            # The token comes before the look: a commit after it always ends the wait.
            token = watcher.token()
            now = self.clock.time()
            has_ready, next_due = self._peek(queues)
            if has_ready or (next_due is not None and next_due <= now):
                taken = self._lease(queues, limit)
                if taken:
                    return taken
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if next_due is not None:
                remaining = min(remaining, max(next_due - now, 0.001))
            watcher.wait(token, remaining)

    def _lease(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        """Promote what fell due, then lease up to `limit` ready messages: one transaction."""
        now = self.clock.time()
        sql = self._lease_sql.get(len(queues))
        if sql is None:
            sql = self._lease_sql[len(queues)] = _lease_statement(len(queues))
        params: list[Any] = [now + self.visibility_timeout, self.consumer_id]
        for queue in queues:
            params.append(queue)
            params.append(limit)
        if len(queues) > 1:
            params.append(limit)
        with self._db.transaction() as connection:
            # Test-only crash points: a process dying here holds the write lock with the
            # transaction open; SQLite rolls it back, nothing is promoted or leased.
            crash_point("before_promote")
            promoted = connection.execute(_PROMOTE, (now,)).rowcount
            if promoted:
                crash_point("after_promote")
            rows = connection.execute(sql, params).fetchall()
        if not rows:
            return []
        # RETURNING gives no order: restore priority (higher first), then FIFO.
        rows.sort(key=lambda row: (-row[2], row[0]))
        self._received += len(rows)
        return [_delivery(row) for row in rows]

    def _peek(self, queues: Sequence[str]) -> tuple[bool, float | None]:
        """Whether `queues` hold a ready message, and when the next row falls due (a read:
        it never blocks and takes no lock)."""
        sql = self._peek_sql.get(len(queues))
        if sql is None:
            marks = ", ".join("?" * len(queues))
            sql = self._peek_sql[len(queues)] = (
                f"SELECT EXISTS (SELECT 1 FROM message WHERE queue IN ({marks}) "
                f"AND due IS NULL), ({_NEXT_DUE})"
            )
        with self._db.use() as connection:
            has_ready, next_due = connection.execute(sql, tuple(queues)).fetchone()
        return bool(has_ready), next_due

    def ack(self, delivery: Delivery) -> None:
        with self._db.use() as connection:
            connection.execute(_ACK, _key(delivery))
        self._acked += 1

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack every delivery in one transaction."""
        if not deliveries:
            return
        with self._db.transaction() as connection:
            connection.executemany(_ACK, [_key(delivery) for delivery in deliveries])
        self._acked += len(deliveries)

    def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        with self._db.use() as connection:
            connection.execute(_REQUEUE if requeue else _ACK, _key(delivery))
        self._rejected += 1

    def requeue_many(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        with self._db.transaction() as connection:
            connection.executemany(_REQUEUE, [_key(delivery) for delivery in deliveries])
        self._rejected += len(deliveries)

    def extend(self, deliveries: Sequence[Delivery], *, seconds: float) -> None:
        if not deliveries:
            return
        until = self.clock.time() + seconds
        rows = [(until, *_key(delivery)) for delivery in deliveries]
        with self._db.transaction() as connection:
            connection.executemany(_EXTEND, rows)

    def recover(
        self,
        consumer_id: str,
        *,
        running: Collection[str] = (),
        discard: Collection[str] = (),
    ) -> int:
        # By tag, not by owner: a tag still matches while nobody else leased the message,
        # even when its lease lapsed in the meantime.
        with self._db.transaction() as connection:
            if discard:
                connection.executemany(_ACK, [_parse_tag(tag) for tag in discard])
            if running:
                connection.executemany(_COUNT_CRASH, [_parse_tag(tag) for tag in running])
            returned = connection.execute(_RECOVER, (consumer_id,)).rowcount
        return int(returned)

    def restore_expired(self) -> int:
        with self._db.use() as connection:
            return int(connection.execute(_RESTORE_LAPSED, (self.clock.time(),)).rowcount)

    # -- dead letters ----------------------------------------------------------------

    def dead_letter(self, delivery: Delivery, *, reason: str) -> None:
        key = _key(delivery)
        with self._db.transaction() as connection:
            # Copied row for row, so the stored message is byte for byte what was sent.
            moved = connection.execute(
                _DEAD_LETTER, (uuid.uuid4().hex, reason, self.clock.time(), *key)
            ).rowcount
            if moved:
                connection.execute(_ACK, key)
        if not moved:
            logger.warning(
                "not dead-lettering message %s (%s): its lease %s is no longer held",
                delivery.message.task_id,
                delivery.message.task_name,
                delivery.tag,
            )
            return
        self._dead_lettered += 1

    def list_dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        with self._db.use() as connection:
            rows = connection.execute(_LIST_DEAD, (limit,)).fetchall()
        return [
            DeadLetter(
                id=dead_id,
                queue=queue,
                reason=reason,
                message=_message(content_type, content_encoding, headers, properties, body),
                failed_at=datetime.fromtimestamp(failed_at, UTC),
            )
            for (
                dead_id,
                queue,
                reason,
                failed_at,
                content_type,
                content_encoding,
                headers,
                properties,
                body,
            ) in rows
        ]

    def replay_dead_letter(self, dead_letter_id: str) -> bool:
        with self._db.transaction() as connection:
            if not connection.execute(_REPLAY_DEAD, (dead_letter_id,)).rowcount:
                return False
            connection.execute("DELETE FROM dead_letter WHERE id = ?", (dead_letter_id,))
        self._published += 1
        return True

    def purge_dead_letters(self) -> int:
        with self._db.use() as connection:
            return int(connection.execute("DELETE FROM dead_letter").rowcount)

    # -- queues ----------------------------------------------------------------------

    def size(self, queue: str) -> int:
        with self._db.use() as connection:
            row = connection.execute(_SIZE, {"queue": queue, "now": self.clock.time()}).fetchone()
        return int(row[0])

    def purge(self, queue: str) -> int:
        # Two statements so each can use an index; leased messages stay (their holder
        # acks or rejects them).
        with self._db.transaction() as connection:
            ready = connection.execute(
                "DELETE FROM message WHERE queue = ? AND due IS NULL", (queue,)
            ).rowcount
            delayed = connection.execute(
                "DELETE FROM message WHERE due IS NOT NULL AND owner IS NULL AND queue = ?",
                (queue,),
            ).rowcount
        return int(ready + delayed)

    # -- rate limits -----------------------------------------------------------------

    def reserve_rate_slot(self, key: str, *, interval: float) -> float:
        return reserve_rate_slot(self._db, key, now=self.clock.time(), interval=interval)


def _lease_statement(queue_count: int) -> str:
    """`UPDATE … RETURNING` leasing the first ready messages of `queue_count` queues.

    One queue reads its slice of `message_ready` in order. Several queues take the first
    `limit` of each (each an index range) and merge them, rather than sorting the whole
    backlog of every queue.
    """
    if queue_count == 1:
        pick = f"SELECT id FROM ({_READY_IN_QUEUE})"
    else:
        parts = " UNION ALL ".join(
            f"SELECT id, priority FROM ({_READY_IN_QUEUE})" for _ in range(queue_count)
        )
        pick = f"SELECT id FROM ({parts}) ORDER BY priority DESC, id LIMIT ?"
    return (
        "UPDATE message SET due = ?, owner = ?, deliveries = deliveries + 1 "
        f"WHERE id IN ({pick}) RETURNING {_LEASE_COLUMNS}"
    )


# orjson refuses what it cannot write the kombu way (datetime, Decimal, bytes, huge ints)
# and json_dumps tags those; everything else is plain JSON, ten times faster.
_ORJSON_OPTIONS: Final = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def _dump_json(value: Mapping[str, Any]) -> bytes:
    """Encode headers or properties (a uuid.UUID value is written as its string)."""
    try:
        return orjson.dumps(value, option=_ORJSON_OPTIONS)
    except TypeError:
        return json_dumps(value)


def _json_object(column: bytes | str) -> dict[str, Any] | None:
    """A headers or properties column as a dict; None when it is not a JSON object."""
    try:
        value = json_loads(column)
    except (SerializationError, ValueError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def _message(
    content_type: str,
    content_encoding: str,
    headers: bytes | str,
    properties: bytes | str,
    body: bytes,
) -> Message:
    """The message of a row. A row whose headers or properties are not JSON objects
    (written by something else than celeriac) is still handed out, as an invalid
    envelope, so that the worker dead-letters it with a reason instead of failing every
    fetch that meets it."""
    header_map = _json_object(headers)
    property_map = _json_object(properties)
    if header_map is None or property_map is None:
        logger.warning("malformed message row: headers or properties are not JSON objects")
        return Message(
            headers=header_map or {},
            body=bytes(body),
            properties=property_map or {},
            content_type=INVALID_ENVELOPE,
        )
    return Message(
        headers=header_map,
        body=body,
        properties=property_map,
        content_type=content_type,
        content_encoding=content_encoding,
    )


def _delivery(row: tuple[Any, ...]) -> Delivery:
    (
        message_id,
        queue,
        _priority,
        deliveries,
        crashes,
        exchange,
        routing_key,
        content_type,
        content_encoding,
        headers,
        properties,
        body,
    ) = row
    return Delivery(
        message=_message(content_type, content_encoding, headers, properties, body),
        queue=queue,
        tag=f"{message_id}.{deliveries}",
        exchange=exchange,
        routing_key=routing_key,
        redelivered=deliveries > 1,
        crashes=crashes,
        handle=(message_id, deliveries),
    )


def _key(delivery: Delivery) -> tuple[int, int]:
    handle = delivery.handle
    if isinstance(handle, tuple):
        return handle
    return _parse_tag(delivery.tag)


def _parse_tag(tag: str) -> tuple[int, int]:
    """`"<id>.<deliveries>"` → (id, deliveries); a foreign tag matches no row."""
    message_id, _, deliveries = tag.partition(".")
    try:
        return int(message_id), int(deliveries)
    except ValueError:
        return -1, -1
