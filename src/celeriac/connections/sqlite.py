"""SQLite connection handling shared by the SQLite broker and the SQLite result backend.

What lives here: parsing `sqlite:///` URLs, one connection per thread per `Database`
(WAL, busy timeout, schema created on first use), fork safety, driver-error mapping, and
the rate-limit slot both keep. What does not: the change watcher
(`connections/sqlite_watch.py`); any table of the broker or the backend (each keeps
its own layout at the top of its module); the broker and the backend never import each
other, only this module.

Fork safety. SQLite keeps per-file lock state in process-global structures, so a
connection that is open when the process forks leaves the child with lock bookkeeping
that does not match the locks it really holds (SQLite's "how to corrupt" guide, §2.6).
Closing a connection in the child is unsafe for the same reason. So, before every
`os.fork()`, this module closes every connection it opened (waiting for statements in
flight) and holds new connections back until the fork is done; both processes then
reconnect on their next use. As a second line of defence a connection notices when the
process id changed (a fork that bypassed the hooks) and is abandoned, never closed, in
the child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from celeriac.exceptions import CeleriacError, ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from types import TracebackType

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "RATE_SLOT_SCHEMA",
    "Database",
    "open_database",
    "parse_sqlite_url",
    "reserve_rate_slot",
    "seconds_option",
]

logger = logging.getLogger(__name__)

# Seconds a writer waits for another process's write lock before giving up. Write
# transactions here last well under a millisecond; only a purge of a huge queue or a
# stalled disk holds the lock for long, and a slow publish beats a failed one.
DEFAULT_BUSY_TIMEOUT: Final = 30.0
# RETURNING (3.35) is how receive leases a batch in one statement.
MIN_SQLITE_VERSION: Final = (3, 35, 0)
# The WAL is truncated back to this size after a checkpoint, so a burst does not leave
# a huge file behind.
JOURNAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
# How long the before-fork hook waits for a statement in flight on another thread.
FORK_WAIT: Final = 10.0
_SYNCHRONOUS = {"off": "OFF", "normal": "NORMAL", "full": "FULL", "extra": "EXTRA"}
_EXAMPLES = (
    "write sqlite:///celeriac.db (a file relative to the current directory) or "
    "sqlite:////absolute/path/celeriac.db (four slashes for an absolute path)"
)


# Cluster-wide rate limits (one row per key), in the broker's schema and the backend's:
# a broker that has the table uses it; a RabbitMQ fleet with SQLite results uses the
# backend's.
RATE_SLOT_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS rate_slot (
    key TEXT PRIMARY KEY,
    slot REAL NOT NULL
);
"""
_RATE_SLOT: Final = (
    "INSERT INTO rate_slot (key, slot) VALUES (:key, :now) ON CONFLICT (key) "
    "DO UPDATE SET slot = max(:now, slot + :interval) RETURNING slot"
)


def reserve_rate_slot(db: Database, key: str, *, now: float, interval: float) -> float:
    """Reserve the next start slot of `key`: one upsert, atomic across every process on
    the file (no read-modify-write race)."""
    with db.use() as connection:
        row = connection.execute(
            _RATE_SLOT, {"key": key, "now": now, "interval": interval}
        ).fetchone()
    return float(row[0])


def seconds_option(options: Mapping[str, Any], name: str, default: float, *, setting: str) -> float:
    """Transport option `name`, a number of seconds >= 0; `setting` is where it was set
    (`broker_transport_options`), for the error message.

    Raises:
        ImproperlyConfigured: not a number, or negative.
    """
    value = options.get(name, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(
            f"{setting}[{name!r}] must be a number of seconds, got {value!r}"
        ) from None
    if number < 0:
        raise ImproperlyConfigured(f"{setting}[{name!r}] must be >= 0")
    return number


def parse_sqlite_url(url: str) -> Path:
    """The database file named by a `sqlite://` URL, made absolute.

    `sqlite:///relative/path.db` is relative to the current directory (resolved now, so a
    later `chdir` does not move the file); `sqlite:////absolute/path.db` is absolute.

    Raises:
        ImproperlyConfigured: the URL names no file, a host, options, or `:memory:`.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "sqlite":
        raise ImproperlyConfigured(f"not an SQLite URL: {url!r}; {_EXAMPLES}")
    if "?" in rest or "#" in rest:
        raise ImproperlyConfigured(
            f"SQLite URL {url!r} carries options; put them in broker_transport_options "
            f"(or result_backend_transport_options) instead, and {_EXAMPLES}"
        )
    if not rest.strip("/"):
        raise ImproperlyConfigured(f"SQLite URL {url!r} names no database file; {_EXAMPLES}")
    if not rest.startswith("/"):
        raise ImproperlyConfigured(
            f"SQLite URL {url!r} names a host ({rest.split('/')[0]!r}); SQLite is a local "
            f"file, so {_EXAMPLES}"
        )
    raw = unquote(rest[1:])
    if not raw or raw.endswith("/"):
        raise ImproperlyConfigured(f"SQLite URL {url!r} names no database file; {_EXAMPLES}")
    if raw == ":memory:" or raw.startswith("file:"):
        raise ImproperlyConfigured(
            f"SQLite URL {url!r}: an in-memory or URI database cannot be shared between "
            "threads and processes; use memory:// for an in-process broker, or "
            f"{_EXAMPLES}"
        )
    path = Path(raw)
    return path if path.is_absolute() else Path.cwd() / path


def check_location(path: Path) -> None:
    """Fail early, with a fix, when `path` cannot hold a database file.

    Raises:
        ImproperlyConfigured: the directory is missing or `path` is a directory.
    """
    if path.is_dir():
        raise ImproperlyConfigured(
            f"SQLite database path {path} is a directory; name a file inside it, e.g. "
            f"sqlite:///{path / 'celeriac.db'}"
        )
    if not path.parent.is_dir():
        raise ImproperlyConfigured(
            f"the directory {path.parent} of SQLite database {path.name} does not exist; "
            f"create it first (mkdir -p {path.parent}) or use a path in an existing "
            f"directory, e.g. sqlite:///celeriac.db"
        )


def create_private_file(path: Path) -> None:
    """Create `path` readable by its owner only (0600) unless it exists.

    Task arguments and results are stored in the file; SQLite gives its `-wal` and `-shm`
    files the database file's mode, so they are private too. An existing file keeps the
    mode its owner gave it.
    """
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError:
        return  # sqlite3.connect reports the real problem, with the fix
    os.close(descriptor)


# The result code of a full disk (sqlite3.SQLITE_FULL, not in every typeshed).
SQLITE_FULL: Final = 13


def is_full_error(exc: sqlite3.Error) -> bool:
    """True for SQLITE_FULL: the disk (or the file's page limit) is full."""
    if getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL:
        return True
    return "database or disk is full" in str(exc).lower()


def is_locked_error(exc: sqlite3.Error) -> bool:
    """True for SQLITE_BUSY/SQLITE_LOCKED: another process held the lock too long."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


# -- fork handling ----------------------------------------------------------------------

# Every live Database of this process, for the fork hooks.
_databases: weakref.WeakSet[Database] = weakref.WeakSet()
# Held from just before a fork until just after it: no connection opens meanwhile.
_fork_lock = threading.Lock()
# Bumped at every fork (both sides): a connection from an older generation is stale.
_generation = 0


def _before_fork() -> None:
    global _generation
    _fork_lock.acquire()
    _generation += 1
    for database in list(_databases):
        database._close_all(wait=FORK_WAIT)


def _after_fork_in_parent() -> None:
    _fork_lock.release()


def _after_fork_in_child() -> None:
    global _fork_lock, _generation
    # Locks other threads held at the fork stay held forever in the child: renew them.
    _fork_lock = threading.Lock()
    _generation += 1
    for database in list(_databases):
        database._reset_after_fork()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


# -- connections -------------------------------------------------------------------------


class _Slot:
    """One thread's connection, with the lock that keeps the fork hook out mid-statement."""

    __slots__ = ("__weakref__", "closed", "connection", "generation", "lock", "pid")

    def __init__(self, connection: sqlite3.Connection, generation: int) -> None:
        self.connection = connection
        self.generation = generation
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        # An error here means the connection is already broken: nothing left to release.
        with contextlib.suppress(sqlite3.Error):
            self.connection.close()


# Connections inherited across a fork that bypassed the hooks: referenced forever so that
# they are never closed (closing them in the child would release the parent's locks).
_abandoned: list[sqlite3.Connection] = []


class _Using:
    """`with database.use() as connection:` — this thread's connection, under its lock,
    with driver errors mapped. A class rather than a generator: it is on the hot path."""

    __slots__ = ("_database", "_slot")

    def __init__(self, database: Database) -> None:
        self._database = database
        self._slot: _Slot | None = None

    def __enter__(self) -> sqlite3.Connection:
        database = self._database
        while True:
            slot = database._slot()
            slot.lock.acquire()
            if not slot.closed:
                self._slot = slot
                return slot.connection
            # Closed by the fork hook or close() between lookup and lock: reopen.
            slot.lock.release()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release(exc)

    def _release(self, failure: BaseException | None) -> None:
        assert self._slot is not None
        self._slot.lock.release()
        if isinstance(failure, sqlite3.Error):
            raise self._database.map_error(failure) from failure


class _Transaction:
    """`with database.transaction() as connection:` — `BEGIN IMMEDIATE` … `COMMIT`.

    IMMEDIATE takes the write lock up front (waiting up to the busy timeout), so a
    transaction never fails half way when it turns from reading to writing.
    """

    __slots__ = ("_using",)

    def __init__(self, database: Database) -> None:
        self._using = _Using(database)

    def __enter__(self) -> sqlite3.Connection:
        connection = self._using.__enter__()
        try:
            connection.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            self._using._release(exc)
            raise
        return connection

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._using._slot is not None
        connection = self._using._slot.connection
        failure = exc
        if exc is None:
            try:
                connection.execute("COMMIT")
            except sqlite3.Error as commit_failure:
                failure = commit_failure
                _rollback(connection)
        else:
            _rollback(connection)
        self._using._release(failure)


def _rollback(connection: sqlite3.Connection) -> None:
    # SQLite may have rolled back by itself already (e.g. on SQLITE_FULL).
    if connection.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")


def open_database(
    path: Path,
    options: Mapping[str, Any],
    *,
    setting: str,
    schema: str,
    error: type[CeleriacError],
    locked_error: type[CeleriacError] | None = None,
    what: str,
) -> Database:
    """The `Database` of a broker or backend, tuned by its transport options
    `busy_timeout` and `synchronous` (from `setting`, for error messages)."""
    return Database(
        path,
        schema=schema,
        busy_timeout=seconds_option(options, "busy_timeout", DEFAULT_BUSY_TIMEOUT, setting=setting),
        synchronous=str(options.get("synchronous", "normal")),
        error=error,
        locked_error=locked_error,
        what=what,
    )


class Database:
    """One SQLite file as used by one broker or backend object.

    Each thread gets its own connection, opened on first use. The first connection of
    the process also switches the file to WAL mode and runs `schema` (idempotent DDL
    inside one write transaction), so the file and its tables appear on first use.

    Args:
        path: The database file (absolute).
        schema: `CREATE … IF NOT EXISTS` statements, or None to create nothing.
        busy_timeout: Seconds to wait for another writer's lock.
        synchronous: `normal` (durable across process crashes; the default) or `full`
            (also across power loss, one fsync per commit).
        error: Exception class for failed operations.
        locked_error: Exception class when the lock stayed taken past `busy_timeout`, or
            the disk is full (both pass; the SQLite broker waits them out).
        what: How error messages name this database ("SQLite broker").
    """

    def __init__(
        self,
        path: Path,
        *,
        schema: str | None,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        synchronous: str = "normal",
        error: type[CeleriacError],
        locked_error: type[CeleriacError] | None = None,
        what: str = "SQLite database",
    ) -> None:
        pragma = _SYNCHRONOUS.get(str(synchronous).lower())
        if pragma is None:
            raise ImproperlyConfigured(
                f"{what}: synchronous={synchronous!r} is not a mode; use 'normal' (durable "
                "across process crashes) or 'full' (also across power loss)"
            )
        if busy_timeout < 0:
            raise ImproperlyConfigured(f"{what}: busy_timeout must be >= 0 seconds")
        self.path = path
        self.schema = schema
        self.busy_timeout = float(busy_timeout)
        self.synchronous = pragma
        self.error = error
        self.locked_error = locked_error or error
        self.what = what
        self._local = threading.local()
        self._slots: weakref.WeakSet[_Slot] = weakref.WeakSet()
        self._slots_lock = threading.Lock()
        self._ready = False
        _databases.add(self)

    # -- connections ---------------------------------------------------------------

    def use(self) -> _Using:
        """This thread's connection (opened on first use), locked while in the block."""
        return _Using(self)

    def transaction(self) -> _Transaction:
        """A write transaction on this thread's connection; committed when the block ends,
        rolled back when it raises."""
        return _Transaction(self)

    def connect(self) -> None:
        """Open this thread's connection now (creating the file and schema)."""
        with self.use():
            pass

    def _slot(self) -> _Slot:
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is not None and slot.generation == _generation and not slot.closed:
            if slot.pid == os.getpid():
                return slot
            # Forked without our hooks: never touch the inherited connection again.
            _abandoned.append(slot.connection)
        return self._open_slot()

    def _open_slot(self) -> _Slot:
        # Holding the fork lock while opening: no fork can copy a half-open connection.
        with _fork_lock:
            connection = self._open()
            slot = _Slot(connection, _generation)
            with self._slots_lock:
                self._slots.add(slot)
        self._local.slot = slot
        return slot

    def _open(self) -> sqlite3.Connection:
        check_location(self.path)
        create_private_file(self.path)
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            need = ".".join(map(str, MIN_SQLITE_VERSION))
            raise ImproperlyConfigured(
                f"{self.what} needs SQLite >= {need}, but Python is linked against "
                f"{sqlite3.sqlite_version}; use a newer Python build or a server broker "
                "such as redis://"
            )
        try:
            connection = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # autocommit; transactions are explicit
                check_same_thread=False,  # the fork hook closes it from another thread
                cached_statements=256,
            )
        except sqlite3.Error as exc:
            raise ImproperlyConfigured(
                f"cannot open {self.what} file {self.path}: {exc}; check that the "
                "directory is writable by this user"
            ) from exc
        try:
            connection.execute(f"PRAGMA synchronous={self.synchronous}")
            # Statement journals of multi-row statements inside BEGIN … COMMIT go to
            # memory, not a temp file: a leasing transaction costs 40 µs instead of 130.
            connection.execute("PRAGMA temp_store=MEMORY")
            connection.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            if not self._ready:
                self._prepare(connection)
                self._ready = True
        except BaseException as exc:
            connection.close()
            if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
                raise ImproperlyConfigured(
                    f"{self.path} is not an SQLite database ({exc}); point the URL at a new "
                    "file or at a celeriac database"
                ) from exc
            if isinstance(exc, sqlite3.Error):
                raise self.map_error(exc) from exc
            raise
        return connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        """Switch the file to WAL and create the schema (once per object and process)."""
        mode = _retry_locked(
            lambda: connection.execute("PRAGMA journal_mode=WAL").fetchone()[0],
            self.busy_timeout,
        )
        if str(mode).lower() != "wal":
            raise ImproperlyConfigured(
                f"{self.what} file {self.path} cannot use WAL mode (got {mode!r}); put it "
                "on a local disk (not a network share)"
            )
        if self.schema:
            connection.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split_statements(self.schema):
                    connection.execute(statement)
            except BaseException:
                _rollback(connection)
                raise
            connection.execute("COMMIT")

    def map_error(self, exc: sqlite3.Error) -> CeleriacError:
        """The celeriac exception for a driver error (never let sqlite3 errors escape)."""
        if isinstance(exc, sqlite3.OperationalError) and is_locked_error(exc):
            return self.locked_error(
                f"{self.what} {self.path} stayed locked by another process for more than "
                f"busy_timeout={self.busy_timeout:g} s ({exc}); retry, or raise "
                "busy_timeout in the transport options"
            )
        if is_full_error(exc):
            # Like a lock held too long, a passing condition: callers that wait out an
            # unreachable server (a worker's consumer loop) wait this out too.
            return self.locked_error(
                f"{self.what} {self.path} is full ({exc}): free disk space; work resumes "
                "once writes succeed again"
            )
        return self.error(f"{self.what} {self.path} failed: {type(exc).__name__}: {exc}")

    # -- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """Close every thread's connection; the next use reconnects."""
        self._close_all(wait=None)

    def _close_all(self, *, wait: float | None) -> None:
        with self._slots_lock:
            slots = list(self._slots)
            self._slots = weakref.WeakSet()
        for slot in slots:
            if slot.pid != os.getpid():
                _abandoned.append(slot.connection)
                slot.closed = True
                continue
            acquired = slot.lock.acquire(timeout=-1 if wait is None else wait)
            if not acquired:
                # The child frees other threads' state, which would close this connection
                # there: keep it referenced so that it is never closed in the child.
                _abandoned.append(slot.connection)
                logger.warning(
                    "%s %s: a statement was still running after %.0f s at fork; the "
                    "child will not touch that connection",
                    self.what,
                    self.path,
                    wait,
                )
                continue
            try:
                slot.close()
            finally:
                slot.lock.release()

    def _reset_after_fork(self) -> None:
        for slot in list(self._slots):
            if not slot.closed:
                _abandoned.append(slot.connection)
                slot.closed = True
        self._slots = weakref.WeakSet()
        self._slots_lock = threading.Lock()
        self._local = threading.local()


def _retry_locked(operation: Callable[[], Any], timeout: float) -> Any:
    """Run `operation`, retrying while the file is locked (switching to WAL needs a
    moment alone with the file, and the busy handler does not always cover it)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            return operation()
        except sqlite3.OperationalError as exc:
            if not is_locked_error(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _split_statements(script: str) -> Iterable[str]:
    """Split DDL on `;` (the schemas here hold no string literals with semicolons)."""
    return [part.strip() for part in script.split(";") if part.strip()]
