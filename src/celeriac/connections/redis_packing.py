"""Raw Redis commands for the hot path: packed by hiredis, sent on a per-thread connection.

What lives here: `RawCommands` (one dedicated connection per thread and process, past
redis-py's client and pool) and the packing of one or several commands into RESP. What
does not: retries and error mapping (`connections.redis.call_with_retry` wraps every
call made here) and any key layout.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import TYPE_CHECKING, Any

import redis.exceptions as redis_errors

try:
    from hiredis import pack_command as _hiredis_pack_command
except ImportError:  # redis-py without hiredis: its own packer
    _HIREDIS_PACK: Callable[[tuple[Any, ...]], bytes] | None = None
else:
    _HIREDIS_PACK = _hiredis_pack_command

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import redis

__all__ = ["RawCommands", "pack_commands"]


class RawCommands:
    """A dedicated connection per thread for the hottest commands (publish, fetch, ack,
    result store), packed by `_pack` and sent with the connection's own
    `send_packed_command`/`read_response`.

    redis-py's client and pool add tens of microseconds per command (pool checkout and
    release, observability hooks); on a path run once per task that is most of the
    cost. Replies come back raw (bytes, ints, lists), as the callers expect. Errors
    propagate as redis-py's, so `call_with_retry` maps and retries them as usual; a
    connection that failed is dropped and the next command dials again. A new process
    (after `fork()`) gets new connections.
    """

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[Any] = []

    def _connection(self) -> Any:
        local = self._local
        pid = os.getpid()
        if getattr(local, "pid", None) != pid:
            local.pid = pid
            local.conn = self._pool.connection_class(**self._pool.connection_kwargs)
            with self._lock:
                self._all.append(local.conn)
        return local.conn

    def execute(self, *args: Any) -> Any:
        """Send one command and return its raw reply."""
        conn = self._connection()
        packed = _pack(conn, args)
        try:
            conn.send_packed_command(packed)
            return conn.read_response()
        except redis_errors.ResponseError:
            raise  # the server answered: the connection is fine
        except BaseException:
            conn.disconnect()
            raise

    def pipeline(self, *commands: Sequence[Any]) -> list[Any]:
        """Send `commands` in one write, run one after the other (no MULTI); return their
        replies. An error reply is raised once every reply has been read."""
        conn = self._connection()
        packed = pack_commands(conn, commands)
        replies: list[Any] = []
        refused: redis_errors.ResponseError | None = None
        try:
            conn.send_packed_command(packed)
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except redis_errors.ResponseError as exc:
                    refused = refused or exc
                    replies.append(exc)
        except BaseException:
            conn.disconnect()
            raise
        if refused is not None:
            raise refused
        return replies

    def transaction(self, *commands: Sequence[Any]) -> Any:
        """Run `commands` in one MULTI/EXEC, written in one go; return EXEC's reply."""
        conn = self._connection()
        packed = pack_commands(conn, (("MULTI",), *commands, ("EXEC",)))
        try:
            conn.send_packed_command(packed)
            for _ in range(len(commands) + 1):
                conn.read_response()  # +OK, then +QUEUED per command
            return conn.read_response()
        except BaseException:
            # Replies may still be in flight: never reuse a half-read connection.
            conn.disconnect()
            raise

    def script(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a registered `Script` by its SHA, loading it when the server lacks it."""
        try:
            return self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            return self.execute("EVAL", script.script, len(keys), *keys, *args)

    def close(self) -> None:
        """Disconnect every connection made in this process."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):  # closing: nothing to do about it
                conn.disconnect()
        self._local = threading.local()


def _pack(conn: Any, args: tuple[Any, ...]) -> list[bytes]:
    """One command in RESP, packed by hiredis straight from the arguments.

    redis-py's own packing (`send_command`) passes every argument through its
    `Encoder` in Python first: 20.7 µs for a fetch call of 28 arguments, against
    3.9 µs here, with the same bytes for the types the hot commands send (str, bytes,
    int, float). Anything else (bool, None, objects) is refused, like redis-py does,
    with its `DataError`. A command name of several words ("CLIENT TRACKING"), which
    redis-py splits, goes to redis-py.
    """
    name = args[0]
    several_words = " " in name if isinstance(name, str) else b" " in name
    if _HIREDIS_PACK is None or several_words:
        packed: list[bytes] = conn.pack_command(*args)
        return packed
    try:
        return [_HIREDIS_PACK(args)]
    except TypeError as exc:
        raise redis_errors.DataError(f"cannot send {args[0]!r}: {exc}") from None


def pack_commands(conn: Any, commands: Sequence[Sequence[Any]]) -> list[bytes]:
    """Several commands in RESP, in one buffer, each packed by `_pack` (redis-py's
    `pack_commands` encodes every argument in Python first)."""
    return [b"".join(chunk for command in commands for chunk in _pack(conn, tuple(command)))]
