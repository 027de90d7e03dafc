"""SQLite result backend (`sqlite:///path.db`): results next to the embedded broker.

Stores Celery's task record (`ResultMeta.to_dict()`, encoded with `result_serializer`)
with an expiry from `result_expires`, saved groups, and chord join state. Each store is
one statement (the SUCCESS-is-final guard is the upsert's WHERE clause); a chord part is
counted and, when it completes the header, collected in one write transaction. Readers
in `wait` sleep on the process's `ChangeWatcher` and look again only after a commit.

Not here: connection handling and fork safety (`celeriac.connections`), messages
(`celeriac.brokers.sqlite`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar, Final

import orjson

from celeriac import states
from celeriac.backends.base import (
    REVOCATION_TTL,
    ChordPart,
    ResultBackend,
    ResultMeta,
    Revocation,
    check_limit,
    newest_first,
)
from celeriac.connections.sqlite import (
    RATE_SLOT_SCHEMA,
    open_database,
    parse_sqlite_url,
    reserve_rate_slot,
    seconds_option,
)
from celeriac.connections.sqlite_watch import DEFAULT_POLLING_INTERVAL, watcher_for
from celeriac.exceptions import BackendError, ResultTimeout

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["SQLiteBackend"]

# -- storage layout --------------------------------------------------------------------
#
# Every table carries `expires_at` (epoch seconds, NULL = kept forever). An expired row is
# never returned; `cleanup()` deletes them, and `store` deletes a bounded batch now and
# then so the file does not grow forever when nobody calls `cleanup()`.
#   result        one row per task id: `meta` is the encoded Celery record
#   group_result  `GroupResult.save()`: encoded {"result": as_tuple}
#   chord         header size of a chord being joined
#   chord_part    finished header parts, keyed by task id (a redelivered part replaces
#                 its first report instead of counting twice); `position` is the group
#                 index (+inf when unknown)
#   crash         how often a process died running a task (brokers without delivery
#                 counts, i.e. RabbitMQ, keep the redelivery cap through this)
#   revoked       the revocation log workers follow (`app.control.revoke`)
_LIVE_SQL: Final = "(expires_at IS NULL OR expires_at > :now)"
SCHEMA: Final = (
    """
CREATE TABLE IF NOT EXISTS result (
    task_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    meta BLOB NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS result_expires ON result (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS group_result (
    group_id TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at REAL
);
CREATE TABLE IF NOT EXISTS chord (
    group_id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    expires_at REAL
);
CREATE TABLE IF NOT EXISTS chord_part (
    group_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    position REAL NOT NULL,
    status TEXT NOT NULL,
    result BLOB NOT NULL,
    expires_at REAL,
    PRIMARY KEY (group_id, task_id)
);
CREATE TABLE IF NOT EXISTS crash (
    task_id TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    expires_at REAL
);
CREATE TABLE IF NOT EXISTS revoked (
    task_id TEXT PRIMARY KEY,
    terminate INTEGER NOT NULL,
    revoked_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS revoked_at ON revoked (revoked_at);
"""
    + RATE_SLOT_SCHEMA
)
_NOTE_CRASH: Final = (
    "INSERT INTO crash (task_id, count, expires_at) VALUES (?, 1, ?) "
    "ON CONFLICT (task_id) DO UPDATE SET count = crash.count + 1, "
    "expires_at = excluded.expires_at RETURNING count"
)
_CRASH_COUNT: Final = f"SELECT count FROM crash WHERE task_id = :task_id AND {_LIVE_SQL}"

_LIVE: Final = _LIVE_SQL
# A stored SUCCESS is final (Celery's dedupe guard) unless it has expired.
_STORE: Final = (
    "INSERT INTO result (task_id, status, meta, expires_at) "
    "VALUES (:task_id, :status, :meta, :expires_at) "
    "ON CONFLICT (task_id) DO UPDATE SET status = excluded.status, meta = excluded.meta, "
    "expires_at = excluded.expires_at "
    f"WHERE result.status <> '{states.SUCCESS}' OR result.expires_at <= :now"
)
_GET: Final = f"SELECT meta FROM result WHERE task_id = :task_id AND {_LIVE}"
# One statement for any number of ids: the ids travel as one JSON array.
_GET_MANY: Final = (
    "SELECT task_id, meta FROM result "
    f"WHERE task_id IN (SELECT value FROM json_each(:ids)) AND {_LIVE}"
)
# Rows are first inserted in rowid order (an update keeps the row's id).
_RECENT: Final = f"SELECT task_id, meta FROM result WHERE {_LIVE} ORDER BY rowid DESC LIMIT :limit"
_SAVE_GROUP: Final = (
    "INSERT INTO group_result (group_id, value, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (group_id) DO UPDATE SET value = excluded.value, "
    "expires_at = excluded.expires_at"
)
_GET_GROUP: Final = f"SELECT value FROM group_result WHERE group_id = :group_id AND {_LIVE}"
_SET_CHORD_SIZE: Final = (
    "INSERT INTO chord (group_id, size, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (group_id) DO UPDATE SET size = excluded.size, "
    "expires_at = excluded.expires_at"
)
_ADD_PART: Final = (
    "INSERT INTO chord_part (group_id, task_id, position, status, result, expires_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (group_id, task_id) DO UPDATE SET "
    "position = excluded.position, status = excluded.status, result = excluded.result, "
    "expires_at = excluded.expires_at"
)
_CHORD_STATE: Final = (
    "SELECT (SELECT size FROM chord WHERE group_id = :group_id AND "
    f"{_LIVE}), (SELECT count(*) FROM chord_part WHERE group_id = :group_id)"
)
_TAKE_PARTS: Final = (
    "DELETE FROM chord_part WHERE group_id = ? RETURNING position, task_id, status, result"
)
# Expired rows go in bounded batches, so no cleanup holds the write lock for long.
CLEANUP_BATCH: Final = 1000
_EXPIRED: Final = {
    table: (
        f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "
        f"WHERE expires_at <= ? LIMIT {CLEANUP_BATCH})"
    )
    for table in ("result", "group_result", "chord", "chord_part")
}
# Seconds between two opportunistic cleanups by one backend object.
DEFAULT_CLEANUP_INTERVAL: Final = 60.0


# Where the transport options of this module are set (for error messages).
_SETTING: Final = "result_backend_transport_options"


class SQLiteBackend(ResultBackend):
    """Task results in an SQLite file shared by the processes of one machine.

    Transport options (`result_backend_transport_options`):
        polling_interval: Seconds between checks for changes while waiting (default 0.01).
        busy_timeout: Seconds to wait for another process's write lock (default 30).
        synchronous: `normal` (default) or `full` (one fsync per commit).
        cleanup_interval: Seconds between opportunistic deletions of expired rows by one
            backend object (default 60; 0 turns them off, leaving it to `cleanup()`).
    """

    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)
    supports_crash_ledger: ClassVar[bool] = True
    supports_rate_limit: ClassVar[bool] = True
    supports_revocation: ClassVar[bool] = True
    supports_recent: ClassVar[bool] = True

    def __init__(self, url: str = "sqlite:///celeriac.db", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.path = parse_sqlite_url(url)
        options = self.transport_options
        self.polling_interval = seconds_option(
            options, "polling_interval", DEFAULT_POLLING_INTERVAL, setting=_SETTING
        )
        self.cleanup_interval = seconds_option(
            options, "cleanup_interval", DEFAULT_CLEANUP_INTERVAL, setting=_SETTING
        )
        self._db = open_database(
            self.path,
            options,
            setting=_SETTING,
            schema=SCHEMA,
            error=BackendError,
            what="SQLite result backend",
        )
        self._next_cleanup = 0.0

    def close(self) -> None:
        self._db.close()

    def _expires_at(self, now: float) -> float | None:
        return None if self.expires is None else now + self.expires

    # -- task results ----------------------------------------------------------------

    def store(self, meta: ResultMeta) -> None:
        now = self.clock.time()
        params = {
            "task_id": meta.task_id,
            "status": meta.status,
            "meta": self.encode_meta(meta),
            "expires_at": self._expires_at(now),
            "now": now,
        }
        with self._db.use() as connection:
            connection.execute(_STORE, params)
        if self.cleanup_interval and now >= self._next_cleanup:
            self._cleanup_some(now)

    def get(self, task_id: str) -> ResultMeta | None:
        with self._db.use() as connection:
            row = connection.execute(
                _GET, {"task_id": task_id, "now": self.clock.time()}
            ).fetchone()
        return None if row is None else self.decode_meta(row[0], task_id=task_id)

    def get_many(self, task_ids: Sequence[str]) -> dict[str, ResultMeta]:
        if not task_ids:
            return {}
        params = {"ids": orjson.dumps(list(task_ids)).decode(), "now": self.clock.time()}
        with self._db.use() as connection:
            rows = dict(connection.execute(_GET_MANY, params).fetchall())
        return {
            task_id: self.decode_meta(rows[task_id], task_id=task_id)
            for task_id in task_ids
            if task_id in rows
        }

    def recent(self, limit: int) -> list[ResultMeta]:
        """The `limit` live results most recently first stored (by row id), newest
        `date_done` first."""
        check_limit(limit)
        params = {"limit": limit, "now": self.clock.time()}
        with self._db.use() as connection:
            rows = connection.execute(_RECENT, params).fetchall()
        return newest_first(
            (self.decode_meta(meta, task_id=task_id) for task_id, meta in rows), limit
        )

    def reserve_rate_slot(self, key: str, *, interval: float) -> float:
        return reserve_rate_slot(self._db, key, now=self.clock.time(), interval=interval)

    def revoke(self, task_ids: Sequence[str], *, terminate: bool = False) -> None:
        now = self.clock.time()
        with self._db.transaction() as connection:
            connection.execute("DELETE FROM revoked WHERE revoked_at < ?", (now - REVOCATION_TTL,))
            connection.executemany(
                "INSERT INTO revoked (task_id, terminate, revoked_at) VALUES (?, ?, ?) "
                "ON CONFLICT (task_id) DO UPDATE SET terminate = max(terminate, "
                "excluded.terminate), revoked_at = excluded.revoked_at",
                [(task_id, int(terminate), now) for task_id in task_ids],
            )

    def revoked_since(self, cursor: float) -> tuple[list[Revocation], float]:
        with self._db.use() as connection:
            rows = connection.execute(
                "SELECT task_id, terminate, revoked_at FROM revoked WHERE revoked_at >= ? "
                "ORDER BY revoked_at",
                (cursor,),
            ).fetchall()
        found = [Revocation(task_id, bool(flag), at) for task_id, flag, at in rows]
        return found, max([cursor, *(r.at for r in found)])

    def note_crash(self, task_id: str) -> int:
        with self._db.use() as connection:
            row = connection.execute(
                _NOTE_CRASH, (task_id, self._expires_at(self.clock.time()))
            ).fetchone()
        return int(row[0])

    def crash_count(self, task_id: str) -> int:
        with self._db.use() as connection:
            row = connection.execute(
                _CRASH_COUNT, {"task_id": task_id, "now": self.clock.time()}
            ).fetchone()
        return int(row[0]) if row else 0

    def forget(self, task_id: str) -> None:
        with self._db.use() as connection:
            connection.execute("DELETE FROM result WHERE task_id = ?", (task_id,))

    def wait(self, task_id: str, *, timeout: float | None = None) -> ResultMeta:
        """Block until `task_id` is ready, looking again only after a commit to the file.

        Raises:
            ResultTimeout: not ready within `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        watcher = watcher_for(self.path, interval=self.polling_interval)
        while True:
            # The token comes before the look: a store after it always ends the wait.
            token = watcher.token()
            meta = self.get(task_id)
            if meta is not None and meta.is_ready:
                return meta
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ResultTimeout(f"task {task_id} not ready after {timeout} s")
            watcher.wait(token, remaining)

    def wait_many(
        self, task_ids: Sequence[str], *, timeout: float | None = None
    ) -> dict[str, ResultMeta]:
        """Block until every id is ready, reading all pending ids in one query per change.

        Raises:
            ResultTimeout: not all ready within `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        watcher = watcher_for(self.path, interval=self.polling_interval)
        pending = list(dict.fromkeys(task_ids))
        done: dict[str, ResultMeta] = {}
        while True:
            token = watcher.token()
            for task_id, meta in self.get_many(pending).items():
                if meta.is_ready:
                    done[task_id] = meta
            pending = [task_id for task_id in pending if task_id not in done]
            if not pending:
                return {task_id: done[task_id] for task_id in task_ids}
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ResultTimeout(
                    f"{len(pending)} of {len(set(task_ids))} tasks not ready after {timeout} s "
                    f"(first: {pending[0]})"
                )
            watcher.wait(token, remaining)

    # -- groups ----------------------------------------------------------------------

    def save_group(self, group_id: str, result: Any) -> None:
        value = self.encode({"result": result})
        with self._db.use() as connection:
            connection.execute(_SAVE_GROUP, (group_id, value, self._expires_at(self.clock.time())))

    def get_group(self, group_id: str) -> Any | None:
        with self._db.use() as connection:
            row = connection.execute(
                _GET_GROUP, {"group_id": group_id, "now": self.clock.time()}
            ).fetchone()
        if row is None:
            return None
        value = self.decode(row[0])
        return value.get("result") if isinstance(value, dict) else None

    def delete_group(self, group_id: str) -> None:
        with self._db.use() as connection:
            connection.execute("DELETE FROM group_result WHERE group_id = ?", (group_id,))

    # -- chords ----------------------------------------------------------------------

    def set_chord_size(self, group_id: str, size: int) -> None:
        with self._db.use() as connection:
            connection.execute(
                _SET_CHORD_SIZE, (group_id, size, self._expires_at(self.clock.time()))
            )

    def chord_part_return(
        self,
        group_id: str,
        *,
        index: int | None,
        task_id: str,
        status: str,
        result: Any,
    ) -> list[ChordPart] | None:
        now = self.clock.time()
        position = float("inf") if index is None else float(index)
        encoded = self.encode(result)
        # One write transaction: count and collect cannot interleave with another part,
        # so exactly one caller sees the header complete.
        with self._db.transaction() as connection:
            connection.execute(
                _ADD_PART, (group_id, task_id, position, status, encoded, self._expires_at(now))
            )
            size, count = connection.execute(
                _CHORD_STATE, {"group_id": group_id, "now": now}
            ).fetchone()
            if size is None or count < size:
                return None
            rows = connection.execute(_TAKE_PARTS, (group_id,)).fetchall()
            connection.execute("DELETE FROM chord WHERE group_id = ?", (group_id,))
        rows.sort(key=lambda row: row[0])  # header order (RETURNING has none)
        return [
            ChordPart(
                index=position, task_id=part_id, status=part_status, result=self.decode(value)
            )
            for position, part_id, part_status, value in rows
        ]

    # -- housekeeping ----------------------------------------------------------------

    def cleanup(self) -> int:
        """Delete every expired result, group and chord row; return how many."""
        now = self.clock.time()
        total = 0
        for statement in _EXPIRED.values():
            while True:
                with self._db.use() as connection:
                    deleted = int(connection.execute(statement, (now,)).rowcount)
                total += deleted
                if deleted < CLEANUP_BATCH:
                    break
        self._next_cleanup = now + self.cleanup_interval
        return total

    def _cleanup_some(self, now: float) -> None:
        """One bounded batch per table; sooner again while a backlog remains."""
        full = False
        for statement in _EXPIRED.values():
            with self._db.use() as connection:
                deleted = int(connection.execute(statement, (now,)).rowcount)
            full = full or deleted >= CLEANUP_BATCH
        self._next_cleanup = now + (1.0 if full else self.cleanup_interval)
