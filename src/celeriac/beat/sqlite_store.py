"""Beat's state in an SQLite file (the broker's or the result backend's): each change
one `BEGIN IMMEDIATE` transaction, so every process on the file sees it whole.

Lease expiry uses this machine's clock: every process on one SQLite file runs on one
machine.

When the file is also the broker's, a run's message rows are inserted and the run is
recorded as the last run in one transaction (`claim_and_send`): no crash can split them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, final

from celeriac._crashpoints import crash_point
from celeriac.beat.store import ClaimResult, EntryState, Lease, ScheduleStore
from celeriac.connections.sqlite import open_database, parse_sqlite_url
from celeriac.exceptions import CeleriacError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from celeriac.brokers.base import Broker, Outgoing

__all__ = ["SQLiteScheduleStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS beat_lease (
    schedule TEXT PRIMARY KEY,
    holder TEXT,
    token INTEGER NOT NULL DEFAULT 0,
    expires REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS beat_entry (
    schedule TEXT NOT NULL,
    name TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    last_run INTEGER NOT NULL,
    pending_tick INTEGER,
    pending_task_id TEXT,
    PRIMARY KEY (schedule, name)
);
"""


class BeatStoreError(CeleriacError):
    """The beat store refused an operation."""


@final
class SQLiteScheduleStore(ScheduleStore):
    """One schedule's state in an SQLite file.

    Args:
        url: The `sqlite:///` URL.
        options: Transport options (`busy_timeout`, `synchronous`).
        name: The schedule's name.
        time_source: Wall-clock seconds (tests inject a fake clock's `time`).
        broker: The app's broker when it is this file, so a run's message and its record
            are written in one transaction.
    """

    def __init__(
        self,
        url: str,
        options: Mapping[str, Any],
        *,
        name: str,
        time_source: Callable[[], float] = time.time,
        broker: Broker | None = None,
    ) -> None:
        super().__init__(name)
        self._broker = broker
        self.path = path = parse_sqlite_url(url)
        self.where = f"SQLite {path}"
        self._db = open_database(
            path,
            options,
            setting="broker_transport_options",
            schema=SCHEMA,
            error=BeatStoreError,
            what="SQLite beat store",
        )
        self._time = time_source

    def acquire(self, owner: str, *, seconds: float) -> Lease:
        now = self._time()
        with self._db.transaction() as db:
            row = db.execute(
                "SELECT holder, token, expires FROM beat_lease WHERE schedule = ?", (self.name,)
            ).fetchone()
            holder, token, expires = row if row is not None else (None, 0, 0.0)
            if holder is None or expires <= now:
                holder, token = owner, token + 1
            if holder != owner:
                return Lease(holder, 0, expires - now)
            db.execute(
                "INSERT INTO beat_lease (schedule, holder, token, expires) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (schedule) DO UPDATE SET holder = excluded.holder, "
                "token = excluded.token, expires = excluded.expires",
                (self.name, owner, token, now + seconds),
            )
            return Lease(owner, int(token), seconds)

    def release(self, owner: str) -> None:
        with self._db.transaction() as db:
            db.execute(
                "UPDATE beat_lease SET holder = NULL WHERE schedule = ? AND holder = ?",
                (self.name, owner),
            )

    def leader(self) -> str | None:
        with self._db.use() as db:
            row = db.execute(
                "SELECT holder FROM beat_lease WHERE schedule = ? AND expires > ?",
                (self.name, self._time()),
            ).fetchone()
        return None if row is None else row[0]

    def _leads(self, db: Any, owner: str, token: int) -> bool:
        row = db.execute(
            "SELECT 1 FROM beat_lease WHERE schedule = ? AND holder = ? AND token = ? "
            "AND expires > ?",
            (self.name, owner, token, self._time()),
        ).fetchone()
        return row is not None

    def reconcile(
        self, owner: str, token: int, wanted: Mapping[str, str], *, now: int
    ) -> dict[str, EntryState] | None:
        with self._db.transaction() as db:
            if not self._leads(db, owner, token):
                return None
            stored = {
                row[0]
                for row in db.execute(
                    "SELECT name FROM beat_entry WHERE schedule = ?", (self.name,)
                )
            }
            for name in stored - set(wanted):
                db.execute(
                    "DELETE FROM beat_entry WHERE schedule = ? AND name = ?", (self.name, name)
                )
            for name, fingerprint in wanted.items():
                db.execute(
                    "INSERT INTO beat_entry (schedule, name, fingerprint, last_run) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (schedule, name) "
                    "DO UPDATE SET fingerprint = excluded.fingerprint",
                    (self.name, name, fingerprint, now),
                )
            return self._select(db)

    def _select(self, db: Any) -> dict[str, EntryState]:
        rows = db.execute(
            "SELECT name, fingerprint, last_run, pending_tick, pending_task_id FROM beat_entry "
            "WHERE schedule = ?",
            (self.name,),
        )
        return {row[0]: EntryState(row[1], row[2], row[3], row[4]) for row in rows}

    def load(self) -> dict[str, EntryState]:
        with self._db.use() as db:
            return self._select(db)

    def _refusal(self, db: Any, owner: str, token: int, name: str, last_run: int) -> ClaimResult:
        """Why the caller may not claim `name` now, or "claimed" when it may."""
        if not self._leads(db, owner, token):
            return "fenced"
        row = db.execute(
            "SELECT last_run, pending_tick FROM beat_entry WHERE schedule = ? AND name = ?",
            (self.name, name),
        ).fetchone()
        if row is None:
            return "gone"
        if row[1] is not None:
            return "pending"
        if row[0] != last_run:
            return "done"
        return "claimed"

    def claim(
        self, owner: str, token: int, name: str, *, last_run: int, tick: int, task_id: str
    ) -> ClaimResult:
        with self._db.transaction() as db:
            refusal = self._refusal(db, owner, token, name, last_run)
            if refusal != "claimed":
                return refusal
            db.execute(
                "UPDATE beat_entry SET pending_tick = ?, pending_task_id = ? "
                "WHERE schedule = ? AND name = ?",
                (tick, task_id, self.name, name),
            )
            return "claimed"

    @property
    def shares_broker(self) -> bool:
        from celeriac.brokers.sqlite import SQLiteBroker

        broker = self._broker
        return isinstance(broker, SQLiteBroker) and broker.path == self.path

    def claim_and_send(
        self,
        owner: str,
        token: int,
        name: str,
        *,
        last_run: int,
        tick: int,
        items: Sequence[Outgoing],
    ) -> ClaimResult | None:
        from celeriac.brokers.sqlite import SQLiteBroker
        from celeriac.brokers.sqlite_rows import INSERT

        broker = self._broker
        if not isinstance(broker, SQLiteBroker) or broker.path != self.path:
            return None
        broker.connect()  # the message table exists before this transaction writes to it
        rows = broker.message_rows(items)
        crash_point("before_beat_send")
        with self._db.transaction() as db:
            refusal = self._refusal(db, owner, token, name, last_run)
            if refusal != "claimed":
                return refusal
            db.executemany(INSERT, rows)
            db.execute(
                "UPDATE beat_entry SET last_run = ? WHERE schedule = ? AND name = ?",
                (tick, self.name, name),
            )
        broker.count_published(len(rows))
        return "sent"

    def resume(self, owner: str, token: int, name: str, *, tick: int) -> bool:
        with self._db.transaction() as db:
            if not self._leads(db, owner, token):
                return False
            row = db.execute(
                "SELECT 1 FROM beat_entry WHERE schedule = ? AND name = ? AND pending_tick = ?",
                (self.name, name, tick),
            ).fetchone()
            return row is not None

    def confirm(self, name: str, tick: int) -> None:
        with self._db.transaction() as db:
            db.execute(
                "UPDATE beat_entry SET last_run = pending_tick, pending_tick = NULL, "
                "pending_task_id = NULL WHERE schedule = ? AND name = ? AND pending_tick = ?",
                (self.name, name, tick),
            )

    def close(self) -> None:
        self._db.close()
