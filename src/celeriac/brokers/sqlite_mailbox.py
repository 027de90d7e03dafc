"""The broadcast channels on the embedded SQLite broker: one table every process reads.

SQLite has no pub/sub, so commands, replies and events are rows of `broadcast`:

  id           INTEGER PRIMARY KEY AUTOINCREMENT   readers keep the last id they saw
  channel      "command:<ns>.pidbox", "reply:<oid>" or "event:<event exchange>"
  routing_key  the event type as a routing key ("task.multi", "worker.heartbeat")
  message      JSON: headers, body (base64), content type and encoding
  created      unix time; rows older than `KEEP_FOR` are deleted by the writers

A listener starts from the newest row (what was sent before it listened is not for it,
as with pub/sub) and waits on the file's change watcher, not in a loop. The layout is
celeriac's own: stock Celery has no SQLite transport to share it with.
"""

from __future__ import annotations

import base64
import json
import time
from typing import TYPE_CHECKING, Any

from celeriac.brokers.mailbox import Mailbox
from celeriac.connections.sqlite import open_database, parse_sqlite_url
from celeriac.connections.sqlite_watch import watcher_for
from celeriac.exceptions import BrokerConnectionError, BrokerError
from celeriac.protocol.message import Message

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["SQLiteMailbox"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS broadcast (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    message TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS broadcast_channel ON broadcast (channel, id);
"""
# Rows live this long: longer than any reply timeout a client waits.
KEEP_FOR = 300.0
# Writers delete old rows at most this often.
PRUNE_EVERY = 10.0


def _encode(message: Message) -> str:
    return json.dumps(
        {
            "headers": message.headers,
            "body": base64.b64encode(message.body).decode("ascii"),
            "content_type": message.content_type,
            "content_encoding": message.content_encoding,
        },
        default=str,
    )


def _decode(text: str) -> Message:
    data = json.loads(text)
    return Message(
        headers=dict(data.get("headers") or {}),
        body=base64.b64decode(data["body"]),
        content_type=str(data.get("content_type") or ""),
        content_encoding=str(data.get("content_encoding") or "utf-8"),
    )


def _matches(pattern: str, routing_key: str) -> bool:
    """A topic binding key (`#`, `worker.#`, `task.*`) against a routing key."""
    if pattern == "#":
        return True
    want, have = pattern.split("."), routing_key.split(".")
    for index, word in enumerate(want):
        if word == "#":
            return True
        if index >= len(have) or (word != "*" and word != have[index]):
            return False
    return len(want) == len(have)


class SQLiteMailbox(Mailbox):
    """Commands, replies and events as rows of the broker file's `broadcast` table."""

    def __init__(
        self,
        url: str,
        *,
        transport_options: Mapping[str, Any] | None = None,
        namespace: str = "celery",
        event_exchange: str = "celeryev",
    ) -> None:
        super().__init__(
            url,
            transport_options=transport_options,
            namespace=namespace,
            event_exchange=event_exchange,
        )
        self.path = parse_sqlite_url(url)
        self._db = open_database(
            self.path,
            self.transport_options,
            setting="broker_transport_options",
            schema=SCHEMA,
            error=BrokerError,
            locked_error=BrokerConnectionError,
            what="SQLite broadcast channel",
        )
        self._cursors: dict[str, int] = {}
        self._event_pattern: str | None = None
        self._pruned = 0.0

    # -- rows ---------------------------------------------------------------------------

    def _insert(self, channel: str, routing_key: str, message: Message) -> None:
        now = time.time()
        with self._db.transaction() as connection:
            connection.execute(
                "INSERT INTO broadcast (channel, routing_key, message, created) "
                "VALUES (?, ?, ?, ?)",
                (channel, routing_key, _encode(message), now),
            )
            if now - self._pruned > PRUNE_EVERY:
                self._pruned = now
                connection.execute("DELETE FROM broadcast WHERE created < ?", (now - KEEP_FOR,))

    def _newest(self) -> int:
        with self._db.use() as connection:
            row = connection.execute("SELECT MAX(id) FROM broadcast").fetchone()
        return int(row[0] or 0)

    def _read(self, channel: str, timeout: float) -> list[tuple[str, Message]]:
        watcher = watcher_for(self.path)
        deadline = time.monotonic() + timeout
        while True:
            token = watcher.token()
            cursor = self._cursors.get(channel, 0)
            with self._db.use() as connection:
                rows = connection.execute(
                    "SELECT id, routing_key, message FROM broadcast "
                    "WHERE channel = ? AND id > ? ORDER BY id",
                    (channel, cursor),
                ).fetchall()
            if rows:
                self._cursors[channel] = int(rows[-1][0])
                return [(str(row[1]), _decode(str(row[2]))) for row in rows]
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            watcher.wait(token, left)

    # -- client side --------------------------------------------------------------------

    def open_replies(self, oid: str) -> None:
        self._cursors[f"reply:{oid}"] = self._newest()

    def publish_command(self, message: Message) -> None:
        self._insert(f"command:{self.exchange}", "", message)

    def receive_replies(self, oid: str, *, timeout: float) -> list[Message]:
        return [message for _, message in self._read(f"reply:{oid}", timeout)]

    def close_replies(self, oid: str) -> None:
        channel = f"reply:{oid}"
        self._cursors.pop(channel, None)
        with self._db.transaction() as connection:
            connection.execute("DELETE FROM broadcast WHERE channel = ?", (channel,))

    # -- worker side --------------------------------------------------------------------

    def listen(self, node: str) -> None:
        self._cursors[f"command:{self.exchange}"] = self._newest()

    def receive_commands(self, *, timeout: float) -> list[Message]:
        return [message for _, message in self._read(f"command:{self.exchange}", timeout)]

    def reply(self, exchange: str, routing_key: str, message: Message) -> None:
        self._insert(f"reply:{routing_key}", routing_key, message)

    # -- events -------------------------------------------------------------------------

    def publish_event(self, routing_key: str, message: Message) -> None:
        self._insert(f"event:{self.event_exchange}", routing_key, message)

    def listen_events(self, routing_key: str = "#") -> None:
        self._event_pattern = routing_key
        self._cursors[f"event:{self.event_exchange}"] = self._newest()

    def receive_events(self, *, timeout: float) -> list[Message]:
        pattern = self._event_pattern or "#"
        found = self._read(f"event:{self.event_exchange}", timeout)
        return [message for key, message in found if _matches(pattern, key)]

    def close(self) -> None:
        self._db.close()
