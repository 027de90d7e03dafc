"""The SQLite broker's file: its tables, its statements, and how a row becomes a
`Message` or a `Delivery` (and a delivery tag a row key). The operations on them are
`brokers/sqlite.py`'s.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import orjson

from celeriac.brokers.base import INVALID_ENVELOPE, Delivery
from celeriac.connections.sqlite import RATE_SLOT_SCHEMA
from celeriac.exceptions import SerializationError
from celeriac.protocol.message import Message
from celeriac.protocol.serializers import json_dumps, json_loads

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "ACK",
    "CONSUMERS",
    "COUNT_CRASH",
    "COUNT_CRASH_OF",
    "DEAD_LETTER",
    "EXTEND",
    "FORGET",
    "HEARTBEAT",
    "INSERT",
    "LIST_DEAD",
    "NEXT_DUE",
    "NOW",
    "PROMOTE",
    "RECOVER",
    "REGISTER",
    "REPLAY_DEAD",
    "REQUEUE",
    "RESTORE_LAPSED",
    "SCHEMA",
    "SILENT",
    "SIZE",
    "dump_json",
    "lease_statement",
    "parse_tag",
    "row_delivery",
    "row_key",
    "row_message",
]

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
# `crashes` counts the consumers that died running the message (and the leases that lapsed).
#
# `consumer` holds one presence record per consuming process, its times on SQLite's own
# clock (`NOW`): a consumer whose heartbeat is older than `worker_lost_after` is reaped.
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
CREATE TABLE IF NOT EXISTS consumer (
    id TEXT PRIMARY KEY,
    worker TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pool TEXT NOT NULL,
    concurrency INTEGER NOT NULL,
    started REAL NOT NULL,
    heartbeat REAL NOT NULL,
    held INTEGER NOT NULL,
    running TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS consumer_heartbeat ON consumer (heartbeat);
"""
    + RATE_SLOT_SCHEMA
)

INSERT: Final = (
    "INSERT INTO message (queue, priority, due, exchange, routing_key, content_type, "
    "content_encoding, headers, properties, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# A leased message its holder's presence record lists as running.
_LISTED_RUNNING: Final = (
    "(owner IS NOT NULL AND EXISTS (SELECT 1 FROM consumer WHERE consumer.id = message.owner "
    "AND instr(' ' || consumer.running || ' ', ' ' || message.id || '.' || message.deliveries "
    "|| ' ') > 0))"
)
# Delayed messages that fell due and lapsed leases become ready (index `message_due`). A
# lease lapses only when its holder stopped renewing it (dead, or stalled past the
# visibility timeout): the last resort counts a crash against what it was running.
PROMOTE: Final = (
    f"UPDATE message SET due = NULL, crashes = crashes + {_LISTED_RUNNING}, owner = NULL "
    "WHERE due <= ?"
)
RESTORE_LAPSED: Final = (
    f"UPDATE message SET due = NULL, crashes = crashes + {_LISTED_RUNNING}, owner = NULL "
    "WHERE due <= ? AND owner IS NOT NULL"
)
LEASE_COLUMNS: Final = (
    "id, queue, priority, deliveries, crashes, exchange, routing_key, content_type, "
    "content_encoding, headers, properties, body"
)
READY_IN_QUEUE: Final = (
    "SELECT id, priority FROM message WHERE queue = ? AND due IS NULL "
    "ORDER BY priority DESC, id LIMIT ?"
)
NEXT_DUE: Final = "SELECT due FROM message WHERE due IS NOT NULL ORDER BY due LIMIT 1"
ACK: Final = "DELETE FROM message WHERE id = ? AND deliveries = ?"
REQUEUE: Final = "UPDATE message SET due = NULL, owner = NULL WHERE id = ? AND deliveries = ?"
EXTEND: Final = "UPDATE message SET due = ? WHERE id = ? AND deliveries = ? AND owner IS NOT NULL"
COUNT_CRASH: Final = "UPDATE message SET crashes = crashes + 1 WHERE id = ? AND deliveries = ?"
# A reaped consumer's running message, while still leased to it.
COUNT_CRASH_OF: Final = (
    "UPDATE message SET crashes = crashes + 1 "
    "WHERE id = ? AND deliveries = ? AND owner = ? AND due IS NOT NULL"
)
# SQLite's clock, in epoch seconds: presence records are stamped with it, not the client's.
NOW: Final = "((julianday('now') - 2440587.5) * 86400.0)"
REGISTER: Final = (
    "INSERT OR REPLACE INTO consumer (id, worker, host, pid, pool, concurrency, started, "
    f"heartbeat, held, running) VALUES (?, ?, ?, ?, ?, ?, {NOW}, {NOW}, ?, ?)"
)
HEARTBEAT: Final = f"UPDATE consumer SET heartbeat = {NOW}, held = ?, running = ? WHERE id = ?"
SILENT: Final = f"SELECT id, running FROM consumer WHERE heartbeat < {NOW} - ?"
FORGET: Final = "DELETE FROM consumer WHERE id = ?"
CONSUMERS: Final = (
    "SELECT id, worker, host, pid, pool, concurrency, started, heartbeat, held, running, "
    f"{NOW} - heartbeat FROM consumer ORDER BY worker, id"
)
RECOVER: Final = "UPDATE message SET due = NULL, owner = NULL WHERE due IS NOT NULL AND owner = ?"
DEAD_LETTER: Final = (
    "INSERT INTO dead_letter (id, queue, reason, failed_at, priority, deliveries, crashes, "
    "exchange, routing_key, content_type, content_encoding, headers, properties, body) "
    "SELECT ?, queue, ?, ?, priority, deliveries, crashes, exchange, routing_key, "
    "content_type, content_encoding, headers, properties, body "
    "FROM message WHERE id = ? AND deliveries = ?"
)
# A dead letter whose body was cut to `dead_letter_body_max` records the full size in
# its properties under this key (no schema change for existing files).
BODY_SIZE_KEY: Final = "celeriac_body_size"
_BODY_SIZE: Final = (
    "CASE WHEN json_valid(CAST(properties AS TEXT)) THEN "
    f"json_extract(CAST(properties AS TEXT), '$.{BODY_SIZE_KEY}') END"
)
LIST_DEAD: Final = (
    "SELECT id, queue, reason, failed_at, content_type, content_encoding, headers, "
    f"properties, body, {_BODY_SIZE} FROM dead_letter ORDER BY failed_at, rowid LIMIT ?"
)
DEAD_BODY_SIZE: Final = f"SELECT {_BODY_SIZE}, length(body) FROM dead_letter WHERE id = ?"
# Parameters: the body limit, the dead letter's id, the body limit. SET expressions see
# the row before the update, so length(body) is the full size.
TRIM_DEAD: Final = (
    "UPDATE dead_letter SET body = substr(body, 1, ?1), properties = CASE "
    "WHEN json_valid(CAST(properties AS TEXT)) THEN "
    f"json_set(CAST(properties AS TEXT), '$.{BODY_SIZE_KEY}', length(body)) "
    f"ELSE json_object('{BODY_SIZE_KEY}', length(body)) END "
    "WHERE id = ?2 AND length(body) > ?1"
)
EXPIRE_DEAD: Final = "DELETE FROM dead_letter WHERE failed_at < ?"
CAP_DEAD: Final = (
    "DELETE FROM dead_letter WHERE id IN (SELECT id FROM dead_letter "
    "ORDER BY failed_at DESC, rowid DESC LIMIT -1 OFFSET ?)"
)
REPLAY_DEAD: Final = (
    "INSERT INTO message (queue, priority, due, exchange, routing_key, content_type, "
    "content_encoding, headers, properties, body) "
    "SELECT queue, priority, NULL, exchange, routing_key, content_type, content_encoding, "
    "headers, properties, body FROM dead_letter WHERE id = ?"
)
SIZE: Final = (
    "SELECT (SELECT count(*) FROM message WHERE queue = :queue AND due IS NULL) + "
    "(SELECT count(*) FROM message WHERE due IS NOT NULL AND queue = :queue "
    "AND (owner IS NULL OR due <= :now))"
)

# What waits in one queue, by kind: ready (never delayed, due, or a lapsed lease),
# delayed (an ETA still ahead), held (a lease still running); and the next one out.
DEPTH: Final = (
    "SELECT (SELECT count(*) FROM message WHERE queue = :queue AND due IS NULL), "
    "(SELECT count(*) FROM message WHERE due IS NOT NULL AND queue = :queue AND due <= :now), "
    "(SELECT count(*) FROM message WHERE due IS NOT NULL AND queue = :queue "
    "AND owner IS NULL AND due > :now), "
    "(SELECT count(*) FROM message WHERE due IS NOT NULL AND queue = :queue "
    "AND owner IS NOT NULL AND due > :now), "
    "(SELECT headers FROM message WHERE queue = :queue AND due IS NULL "
    "ORDER BY priority DESC, id LIMIT 1)"
)


def lease_statement(queue_count: int) -> str:
    """`UPDATE … RETURNING` leasing the first ready messages of `queue_count` queues.

    One queue reads its slice of `message_ready` in order. Several queues take the first
    `limit` of each (each an index range) and merge them, rather than sorting the whole
    backlog of every queue.
    """
    if queue_count == 1:
        pick = f"SELECT id FROM ({READY_IN_QUEUE})"
    else:
        parts = " UNION ALL ".join(
            f"SELECT id, priority FROM ({READY_IN_QUEUE})" for _ in range(queue_count)
        )
        pick = f"SELECT id FROM ({parts}) ORDER BY priority DESC, id LIMIT ?"
    return (
        "UPDATE message SET due = ?, owner = ?, deliveries = deliveries + 1 "
        f"WHERE id IN ({pick}) RETURNING {LEASE_COLUMNS}"
    )


# orjson refuses what it cannot write the kombu way (datetime, Decimal, bytes, huge ints)
# and json_dumps tags those; everything else is plain JSON, ten times faster.
_ORJSON_OPTIONS: Final = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def dump_json(value: Mapping[str, Any]) -> bytes:
    """Encode headers or properties (a uuid.UUID value is written as its string)."""
    try:
        return orjson.dumps(value, option=_ORJSON_OPTIONS)
    except TypeError:
        return json_dumps(value)


def json_object(column: bytes | str) -> dict[str, Any] | None:
    """A headers or properties column as a dict; None when it is not a JSON object."""
    try:
        value = json_loads(column)
    except (SerializationError, ValueError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def row_message(
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
    header_map = json_object(headers)
    property_map = json_object(properties)
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


def row_delivery(row: tuple[Any, ...]) -> Delivery:
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
        message=row_message(content_type, content_encoding, headers, properties, body),
        queue=queue,
        tag=f"{message_id}.{deliveries}",
        exchange=exchange,
        routing_key=routing_key,
        redelivered=deliveries > 1,
        crashes=crashes,
        handle=(message_id, deliveries),
    )


def row_key(delivery: Delivery) -> tuple[int, int]:
    handle = delivery.handle
    if isinstance(handle, tuple):
        return handle
    return parse_tag(delivery.tag)


def parse_tag(tag: str) -> tuple[int, int]:
    """`"<id>.<deliveries>"` → (id, deliveries); a foreign tag matches no row."""
    message_id, _, deliveries = tag.partition(".")
    try:
        return int(message_id), int(deliveries)
    except ValueError:
        return -1, -1
