"""SQLite broker (`sqlite:///path.db`): the embedded default, for every process of one machine.

Producers (any number of threads), worker processes and result readers share one file in
WAL mode. Every operation is one statement or one short write transaction: publish is one
INSERT, receive leases a whole batch with one `UPDATE … RETURNING`, ack is one DELETE.
A consumer waiting for work does not query in a loop: it waits on the process's
`ChangeWatcher` (a `PRAGMA data_version` poll every 10 ms while anybody waits), and for
the next instant a delayed message falls due or a lease lapses.

Not here: the tables, the statements and how a row becomes a delivery
(`brokers/sqlite_rows.py`), connection handling and fork safety (`celeriac.connections`),
results (`celeriac.backends.sqlite`).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final

from celeriac._crashpoints import crash_point
from celeriac._time import UTC, to_timestamp
from celeriac.brokers.base import (
    Broker,
    ConsumerRecord,
    DeadLetter,
    Delivery,
    Outgoing,
    QueueDepth,
    clamp_priority,
)
from celeriac.brokers.sqlite_rows import (
    ACK,
    BODY_SIZE_KEY,
    CAP_DEAD,
    CONSUMERS,
    COUNT_CRASH,
    COUNT_CRASH_OF,
    DEAD_BODY_SIZE,
    DEAD_LETTER,
    DEPTH,
    EXPIRE_DEAD,
    EXTEND,
    FORGET,
    HEARTBEAT,
    INSERT,
    LIST_DEAD,
    NEXT_DUE,
    PROMOTE,
    RECOVER,
    REGISTER,
    REPLAY_DEAD,
    REQUEUE,
    RESTORE_LAPSED,
    SCHEMA,
    SILENT,
    SIZE,
    TRIM_DEAD,
    dump_json,
    json_object,
    lease_statement,
    parse_tag,
    row_delivery,
    row_key,
    row_message,
)
from celeriac.connections.sqlite import (
    open_database,
    parse_sqlite_url,
    reserve_rate_slot,
    seconds_option,
)
from celeriac.connections.sqlite_watch import DEFAULT_POLLING_INTERVAL, watcher_for
from celeriac.exceptions import (
    BrokerConnectionError,
    BrokerError,
    ImproperlyConfigured,
    PublishError,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence

    from celeriac.protocol.message import Message

__all__ = ["SQLiteBroker"]

logger = logging.getLogger(__name__)

# Where the transport options of this module are set (for error messages).
_SETTING: Final = "broker_transport_options"


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
    supports_presence: ClassVar[bool] = True
    # Long enough that lease renewals every visibility_timeout/3 survive stalls of a
    # minute or more (a busy 2-core box, a 30 s busy_timeout, GC). The last resort only: a
    # child's crash never waits for it (the supervisor recovers), nor does a whole worker
    # killed at once (any live consumer reaps it after `worker_lost_after`).
    default_visibility_timeout: ClassVar[float] = 300.0

    def __init__(self, url: str = "sqlite:///celeriac.db", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.path = parse_sqlite_url(url)
        options = self.transport_options
        if self.visibility_timeout <= 0:
            raise ImproperlyConfigured("broker_transport_options['visibility_timeout'] must be > 0")
        self.polling_interval = seconds_option(
            options, "polling_interval", DEFAULT_POLLING_INTERVAL, setting=_SETTING
        )
        self._db = open_database(
            self.path,
            options,
            setting=_SETTING,
            schema=SCHEMA,
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
            dump_json(message.headers),
            dump_json(message.properties),
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
                connection.execute(INSERT, row)
        except BrokerConnectionError:
            raise
        except BrokerError as exc:
            raise PublishError(f"message {message.task_id} was not queued: {exc}") from exc
        self._published += 1

    def message_rows(self, items: Sequence[Outgoing]) -> list[tuple[Any, ...]]:
        """The `INSERT` rows that queue `items` (for `publish_many`, and for beat, which
        inserts them in its own transaction on this file)."""
        now = self.clock.time()
        return [
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

    def count_published(self, count: int) -> None:
        """Count messages queued by a caller's own transaction (`message_rows`)."""
        self._published += count

    def publish_many(self, items: Sequence[Outgoing]) -> None:
        """Publish every item in one transaction: all are queued, or none."""
        if not items:
            return
        rows = self.message_rows(items)
        try:
            with self._db.transaction() as connection:
                connection.executemany(INSERT, rows)
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
            sql = self._lease_sql[len(queues)] = lease_statement(len(queues))
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
            promoted = connection.execute(PROMOTE, (now,)).rowcount
            if promoted:
                crash_point("after_promote")
            rows = connection.execute(sql, params).fetchall()
        if not rows:
            return []
        # RETURNING gives no order: restore priority (higher first), then FIFO.
        rows.sort(key=lambda row: (-row[2], row[0]))
        self._received += len(rows)
        return [row_delivery(row) for row in rows]

    def _peek(self, queues: Sequence[str]) -> tuple[bool, float | None]:
        """Whether `queues` hold a ready message, and when the next row falls due (a read:
        it never blocks and takes no lock)."""
        sql = self._peek_sql.get(len(queues))
        if sql is None:
            marks = ", ".join("?" * len(queues))
            sql = self._peek_sql[len(queues)] = (
                f"SELECT EXISTS (SELECT 1 FROM message WHERE queue IN ({marks}) "
                f"AND due IS NULL), ({NEXT_DUE})"
            )
        with self._db.use() as connection:
            has_ready, next_due = connection.execute(sql, tuple(queues)).fetchone()
        return bool(has_ready), next_due

    def ack(self, delivery: Delivery) -> None:
        with self._db.use() as connection:
            connection.execute(ACK, row_key(delivery))
        self._acked += 1

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack every delivery in one transaction."""
        if deliveries:
            self._each(ACK, deliveries)
            self._acked += len(deliveries)

    def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        with self._db.use() as connection:
            connection.execute(REQUEUE if requeue else ACK, row_key(delivery))
        self._rejected += 1

    def requeue_many(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            self._each(REQUEUE, deliveries)
            self._rejected += len(deliveries)

    def _each(self, statement: str, deliveries: Sequence[Delivery]) -> None:
        """Run `statement` for every delivery, in one transaction."""
        with self._db.transaction() as connection:
            connection.executemany(statement, [row_key(delivery) for delivery in deliveries])

    def extend(self, deliveries: Sequence[Delivery], *, seconds: float) -> None:
        if not deliveries:
            return
        until = self.clock.time() + seconds
        rows = [(until, *row_key(delivery)) for delivery in deliveries]
        with self._db.transaction() as connection:
            connection.executemany(EXTEND, rows)

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
                connection.executemany(ACK, [parse_tag(tag) for tag in discard])
            if running:
                connection.executemany(COUNT_CRASH, [parse_tag(tag) for tag in running])
            returned = connection.execute(RECOVER, (consumer_id,)).rowcount
            # Its messages are back: it no longer needs reaping.
            connection.execute(FORGET, (consumer_id,))
        return int(returned)

    def restore_expired(self) -> int:
        with self._db.use() as connection:
            return int(connection.execute(RESTORE_LAPSED, (self.clock.time(),)).rowcount)

    # -- presence --------------------------------------------------------------------

    def heartbeat(
        self,
        identity: Mapping[str, str | int],
        *,
        held: int,
        running: Sequence[str],
        register: bool = False,
    ) -> bool:
        tags = " ".join(running)
        with self._db.use() as connection:
            if register:
                connection.execute(
                    REGISTER,
                    (
                        self.consumer_id,
                        str(identity.get("worker", "")),
                        str(identity.get("host", "")),
                        int(identity.get("pid", 0)),
                        str(identity.get("pool", "")),
                        int(identity.get("concurrency", 1)),
                        held,
                        tags,
                    ),
                )
                return True
            return bool(connection.execute(HEARTBEAT, (held, tags, self.consumer_id)).rowcount)

    def reap(self) -> dict[str, int]:
        # One transaction: SQLite runs one writer at a time, so two reapers never both see
        # the same consumer silent, and each message comes back once.
        reaped: dict[str, int] = {}
        with self._db.transaction() as connection:
            silent = connection.execute(SILENT, (self.lost_after,)).fetchall()
            for consumer_id, running in silent:
                connection.executemany(
                    COUNT_CRASH_OF, [(*parse_tag(tag), consumer_id) for tag in running.split()]
                )
                reaped[consumer_id] = int(connection.execute(RECOVER, (consumer_id,)).rowcount)
                connection.execute(FORGET, (consumer_id,))
        for consumer_id, returned in reaped.items():
            logger.warning(
                "Consumer %s was silent for more than %.0f s: presumed dead; returned the "
                "%d message(s) it held",
                consumer_id,
                self.lost_after,
                returned,
            )
        return reaped

    def consumers(self) -> list[ConsumerRecord]:
        with self._db.use() as connection:
            rows = connection.execute(CONSUMERS).fetchall()
        return [
            ConsumerRecord(
                consumer_id=consumer_id,
                worker=worker,
                host=host,
                pid=int(pid),
                pool=pool,
                concurrency=int(concurrency),
                started=float(started),
                heartbeat=float(heartbeat),
                held=int(held),
                running=tuple(running.split()),
                age=max(0.0, float(age)),
            )
            for (
                consumer_id,
                worker,
                host,
                pid,
                pool,
                concurrency,
                started,
                heartbeat,
                held,
                running,
                age,
            ) in rows
        ]

    def withdraw(self, *, hand_off: bool = False) -> None:
        with self._db.use() as connection:
            connection.execute(FORGET, (self.consumer_id,))

    # -- dead letters ----------------------------------------------------------------

    def dead_letter(self, delivery: Delivery, *, reason: str) -> None:
        key = row_key(delivery)
        with self._db.transaction() as connection:
            # Copied row for row, so the stored message is byte for byte what was sent.
            dead_id = uuid.uuid4().hex
            now = self.clock.time()
            moved = connection.execute(DEAD_LETTER, (dead_id, reason, now, *key)).rowcount
            if moved:
                connection.execute(ACK, key)
                limits = self.dead_letter_limits
                connection.execute(TRIM_DEAD, (limits.body_max, dead_id))
                cutoff = limits.cutoff(now)
                if cutoff is not None:
                    connection.execute(EXPIRE_DEAD, (cutoff,))
                if limits.max_count is not None:
                    connection.execute(CAP_DEAD, (limits.max_count,))
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
            rows = connection.execute(LIST_DEAD, (limit,)).fetchall()
        return [
            DeadLetter(
                id=dead_id,
                queue=queue,
                reason=reason,
                message=_without_size(
                    row_message(content_type, content_encoding, headers, properties, body)
                ),
                failed_at=datetime.fromtimestamp(failed_at, UTC),
                body_size=int(body_size) if body_size is not None else None,
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
                body_size,
            ) in rows
        ]

    def replay_dead_letter(self, dead_letter_id: str) -> bool:
        with self._db.transaction() as connection:
            row = connection.execute(DEAD_BODY_SIZE, (dead_letter_id,)).fetchone()
            if row is not None and row[0] is not None:
                raise BrokerError(
                    f"dead letter {dead_letter_id} cannot be replayed: only the first "
                    f"{row[1]} of its {row[0]} bytes were kept"
                )
            if not connection.execute(REPLAY_DEAD, (dead_letter_id,)).rowcount:
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
            row = connection.execute(SIZE, {"queue": queue, "now": self.clock.time()}).fetchone()
        return int(row[0])

    def depth(self, queue: str) -> QueueDepth:
        with self._db.use() as connection:
            row = connection.execute(DEPTH, {"queue": queue, "now": self.clock.time()}).fetchone()
        ready, due, delayed, held, headers = row
        oldest = json_object(headers) if headers is not None else None
        task_id = oldest.get("id") if oldest else None
        return QueueDepth(
            queue=queue,
            ready=int(ready) + int(due),
            delayed=int(delayed),
            held=int(held),
            oldest_id=str(task_id) if task_id is not None else None,
        )

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

    # -- monitors --------------------------------------------------------------------

    def dead_letter_count(self) -> int:
        with self._db.use() as connection:
            return int(connection.execute("SELECT count(*) FROM dead_letter").fetchone()[0])

    def overdue_age(self, queue: str) -> float | None:
        now = self.clock.time()
        with self._db.use() as connection:
            # The earliest due time of the queue's ETA messages due but not yet fetched.
            row = connection.execute(
                "SELECT min(due) FROM message WHERE queue = ? AND owner IS NULL AND due <= ?",
                (queue, now),
            ).fetchone()
        return now - float(row[0]) if row[0] is not None and now > row[0] else None


def _without_size(message: Message) -> Message:
    """A dead letter's message without the body-size mark the store added."""
    if BODY_SIZE_KEY not in message.properties:
        return message
    properties = {k: v for k, v in message.properties.items() if k != BODY_SIZE_KEY}
    return replace(message, properties=properties)
