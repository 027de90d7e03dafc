"""Redis result backend, with Celery's keys and JSON (spec §3), notified by pub/sub.

A result is written as Celery writes it: `celery-task-meta-<id>` with SETEX (or SET when
results never expire) and PUBLISH on the channel of the same name, skipped when a
SUCCESS is already stored; one Lua script (`redis_store.lua`) does all of that in one
round trip (a chord header part is stored and joined in one call of the chord script).
Stock `AsyncResult.get()` therefore wakes on our results, and we read theirs.

Waiting never polls: `wait`/`wait_many` borrow a subscriber connection, read the task
keys and SUBSCRIBE to them in one write, and sleep on the socket. Redis runs that MGET
and SUBSCRIBE back to back only when it reads the whole write at once; a longer write
can be run in pieces, so after a long one the still-pending keys are read once more,
now that they are subscribed (a result stored in between is not missed). If that
connection drops, they reconnect, subscribe again and GET again, so a result published
while they were disconnected is still seen.

Chords join with Celery 5.7's keys (`.j` `.t` `.s` `.d` `.c`) in one script
(`redis_chord.lua`): the call that completes the header gets every part, once.
"""

from __future__ import annotations

import math
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from celeriac import states
from celeriac._urls import redact_url
from celeriac.backends.base import (
    GROUP_KEY_PREFIX,
    REVOCATION_TTL,
    TASK_KEY_PREFIX,
    ChordPart,
    ResultBackend,
    ResultMeta,
    Revocation,
    check_limit,
    newest_first,
)
from celeriac.connections.breaker import DEFAULT_COOL_DOWN, DEFAULT_THRESHOLD, CircuitBreaker
from celeriac.connections.redis import (
    RETRYABLE_ERRORS,
    RedisClient,
    load_script,
    new_connection,
)
from celeriac.connections.redis_clock import ServerClock, read_server_time
from celeriac.connections.redis_packing import pack_commands
from celeriac.connections.redis_scan import read_prefixed
from celeriac.exceptions import (
    BackendError,
    CeleriacError,
    ImproperlyConfigured,
    ResultLost,
    ResultTimeout,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    import redis

    from celeriac.connections.redis_async import AsyncKeyWaiter

__all__ = ["RedisBackend"]

# -- storage layout (Celery's; every key gets the backend's global key prefix) ------------
#   celery-task-meta-<task_id>            string: task result JSON; also a pub/sub channel
#   celery-taskset-meta-<group_id>        string: {"result": GroupResult.as_tuple()}
#   celery-taskset-meta-<group_id>.j      zset (list if result_chord_ordered is off): parts
#   celery-taskset-meta-<group_id>.t      string int: chord size delta (add_to_chord)
#   celery-taskset-meta-<group_id>.s      string int: chord size
#   celery-taskset-meta-<group_id>.d      set: "<task_id>:<group_index>" counted (Celery 5.7)
#   celery-taskset-meta-<group_id>.c      string: dispatch claim, "done" once fired (5.7)

# Celery compat: the prefix gets "_" appended unless it already ends with one of these.
_PREFIX_ENDINGS = ":_-."
# celeriac's crash ledger (RabbitMQ fleets): how often a process died running a task.
CRASH_KEY_PREFIX = "celeriac-crashes-"
# How long a crash count is kept when results never expire.
DEFAULT_CRASH_TTL = 86400
# celeriac's revocation log: sorted sets of task ids scored by the time of revocation.
REVOKED_KEY = "celeriac-revoked"
REVOKED_TERMINATE_KEY = "celeriac-revoked-terminate"
# What can break a subscriber connection.
_SUBSCRIBER_ERRORS: tuple[type[BaseException], ...] = (*RETRYABLE_ERRORS, OSError)
# Idle subscriber connections kept for the next wait.
_MAX_IDLE_SUBSCRIBERS = 4
# Longest single sleep on the socket, so a wait without timeout stays interruptible.
_MAX_SOCKET_WAIT = 1.0
# Redis reads a write this short in one piece (it fits one TCP segment on common links,
# MSS 1460) and runs all of its commands before any other client's; a longer one may be
# read, and run, in pieces (Redis reads 16 KiB at a time).
_ONE_READ_BYTES = 1400
# Result keys `recent` reads at most.
RECENT_KEYS_READ = 10_000


def _global_prefix(options: dict[str, Any]) -> str:
    prefix = str(options.get("global_keyprefix") or "")
    if prefix and prefix[-1] not in _PREFIX_ENDINGS:
        prefix += "_"
    return prefix


def _number(options: dict[str, Any], name: str, default: float) -> float:
    value = options.get(name, default)
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(
            f"result_backend_transport_options {name}={value!r} is not a number"
        ) from exc


class RedisBackend(ResultBackend):
    """Results in Redis, readable by stock Celery and the other way round.

    Transport options (`result_backend_transport_options`): global_keyprefix,
    result_chord_ordered (default True), connection_retries, connection_retry_backoff,
    connection_retry_backoff_max, circuit_breaker_threshold (failed attempts in a row,
    over at least 2 s, after which calls fail at once, default 3; 0 turns it off),
    circuit_breaker_cool_down (seconds before one call probes again, default 5) and the
    connection settings of `celeriac.connections.redis`.
    """

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss", "redis+socket", "sentinel")
    supports_crash_ledger: ClassVar[bool] = True
    supports_rate_limit: ClassVar[bool] = True
    supports_revocation: ClassVar[bool] = True
    supports_recent: ClassVar[bool] = True
    supports_native_join: ClassVar[bool] = True

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        options = self.transport_options
        prefix = _global_prefix(options)
        self._task_prefix = prefix + TASK_KEY_PREFIX
        self._group_prefix = prefix + GROUP_KEY_PREFIX
        self._crash_prefix = prefix + CRASH_KEY_PREFIX
        self._prefix = prefix
        self._revoked_key = prefix + REVOKED_KEY
        self._revoked_terminate_key = prefix + REVOKED_TERMINATE_KEY
        self._ordered = bool(options.get("result_chord_ordered", True))
        # One per process (a forked child makes its own backend): a backend that stops
        # answering costs each process a few timeouts, then calls fail at once.
        self.breaker = CircuitBreaker(
            f"result backend {redact_url(url)}",
            threshold=int(_number(options, "circuit_breaker_threshold", DEFAULT_THRESHOLD)),
            cool_down=_number(options, "circuit_breaker_cool_down", DEFAULT_COOL_DOWN),
        )
        self._redis = RedisClient(
            url,
            options,
            scripts=_compose,
            error=BackendError,
            unreachable=BackendError,
            breaker=self.breaker,
        )
        if kwargs.get("clock") is None:
            # Revocation times are shared: stamp them with the server's clock.
            self.clock = ServerClock(
                lambda: self._redis.run("read the server time", read_server_time)
            )
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._async_waiter: AsyncKeyWaiter | None = None

    # -- plumbing -------------------------------------------------------------------

    def _task_key(self, task_id: str) -> str:
        return self._task_prefix + task_id

    def _group_key(self, group_id: str, suffix: str = "") -> str:
        return self._group_prefix + group_id + suffix

    @property
    def _ttl(self) -> int:
        # Celery compat: SETEX takes whole seconds; 0 means keep forever.
        return math.ceil(self.expires) if self.expires else 0

    def close(self) -> None:
        # The client first: a subscriber released after this is disconnected, not kept.
        self._redis.close()
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()

    # -- task results ---------------------------------------------------------------

    def store(self, meta: ResultMeta) -> None:
        key = self._task_key(meta.task_id)
        value = self.encode_meta(meta)
        if self.serializer.name not in ("json", "msgpack"):
            # The script reads JSON and msgpack; for other serializers check here, as
            # Celery does (GET, then write).
            current = self.get(meta.task_id)
            if current is not None and current.status == states.SUCCESS:
                return
        script = self._redis.script("store")
        raw = self._redis.raw()
        self._redis.run(
            f"store the result of {meta.task_id}",
            lambda client: raw.script(script, [key], [value, self._ttl]),
            unreachable=ResultLost,
        )

    def get(self, task_id: str) -> ResultMeta | None:
        raw = self._redis.run(
            f"read the result of {task_id}", lambda client: client.get(self._task_key(task_id))
        )
        return None if raw is None else self.decode_meta(raw, task_id=task_id)

    def get_many(self, task_ids: Sequence[str]) -> dict[str, ResultMeta]:
        if not task_ids:
            return {}
        keys = [self._task_key(task_id) for task_id in task_ids]
        raws = self._redis.run(f"read {len(keys)} results", lambda client: client.mget(keys))
        return {
            task_id: self.decode_meta(raw, task_id=task_id)
            for task_id, raw in zip(task_ids, raws, strict=True)
            if raw is not None
        }

    def recent(self, limit: int) -> list[ResultMeta]:
        """The newest `limit` results by `date_done`, among at most `RECENT_KEYS_READ`
        (10,000) of this app's result keys (SCAN, then MGET in batches). SCAN has no
        order: with more keys than that, the newest may be among those left unread.
        Records that do not decode are left out."""
        check_limit(limit)
        read = partial(read_prefixed, prefix=self._task_prefix, cap=RECENT_KEYS_READ)
        metas = []
        for task_id, raw in self._redis.run("list the recent results", read):
            try:
                metas.append(self.decode_meta(raw, task_id=task_id))
            except CeleriacError:  # not a result record (BackendError, SerializationError)
                continue
        return newest_first(metas, limit)

    def reserve_rate_slot(self, key: str, *, interval: float) -> float:
        return self._redis.reserve_rate_slot(
            key, prefix=self._prefix, interval=interval, now=self.clock.time
        )

    def revoke(self, task_ids: Sequence[str], *, terminate: bool = False) -> None:
        now = self.clock.time()
        keys = [self._revoked_key] + ([self._revoked_terminate_key] if terminate else [])

        def write(client: redis.Redis) -> None:
            pipe = client.pipeline(transaction=True)
            for key in keys:
                pipe.zadd(key, dict.fromkeys(task_ids, now))
                pipe.zremrangebyscore(key, "-inf", now - REVOCATION_TTL)
                pipe.expire(key, int(REVOCATION_TTL))
            pipe.execute()

        self._redis.run(f"revoke {len(task_ids)} task(s)", write)

    def revoked_since(self, cursor: float) -> tuple[list[Revocation], float]:
        def read(client: redis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.zrangebyscore(self._revoked_key, cursor, "+inf", withscores=True)
            pipe.zrangebyscore(self._revoked_terminate_key, cursor, "+inf", withscores=True)
            result: list[Any] = pipe.execute()
            return result

        plain, terminated = self._redis.run("read revocations", read)
        stop = {_text(member) for member, _ in terminated}
        found = [
            Revocation(_text(member), _text(member) in stop, float(score))
            for member, score in plain
        ]
        return found, max([cursor, *(r.at for r in found)])

    def note_crash(self, task_id: str) -> int:
        key = f"{self._crash_prefix}{task_id}"

        def incr(client: redis.Redis) -> int:
            pipe = client.pipeline(transaction=True)
            pipe.incr(key)
            pipe.expire(key, self._ttl or DEFAULT_CRASH_TTL)
            count, _ = pipe.execute()
            return int(count)

        count: int = self._redis.run(f"count a crash of {task_id}", incr)
        return count

    def crash_count(self, task_id: str) -> int:
        value = self._redis.run(
            f"read the crashes of {task_id}",
            lambda client: client.get(f"{self._crash_prefix}{task_id}"),
        )
        return int(value) if value else 0

    def forget(self, task_id: str) -> None:
        self._redis.run(f"forget {task_id}", lambda client: client.delete(self._task_key(task_id)))

    # -- waiting --------------------------------------------------------------------

    def wait(self, task_id: str, *, timeout: float | None = None) -> ResultMeta:
        return self.wait_many([task_id], timeout=timeout)[task_id]

    def wait_many(
        self, task_ids: Sequence[str], *, timeout: float | None = None
    ) -> dict[str, ResultMeta]:
        deadline = None if timeout is None else time.monotonic() + timeout
        done: dict[str, ResultMeta] = {}
        pending = {self._task_key(tid): tid for tid in task_ids}
        delays = self._redis.policy.delays()
        while pending:
            conn = None
            try:
                conn = self._subscriber()
                self._read_and_subscribe(conn, pending, done)
                delays = self._redis.policy.delays()
                self._listen(conn, pending, done, deadline, timeout)
            except _SUBSCRIBER_ERRORS as exc:
                if isinstance(exc, ResultTimeout):
                    raise
                if conn is not None:
                    conn.disconnect()
                    conn = None
                delay = next(delays, None)
                if delay is None:
                    raise BackendError(
                        f"lost the Redis subscription while waiting for results ({exc}); "
                        "check that the server is running"
                    ) from exc
                time.sleep(delay)
            finally:
                if conn is not None:
                    self._release(conn)
        return {tid: done[tid] for tid in task_ids}

    async def wait_many_async(
        self, task_ids: Sequence[str], *, timeout: float | None = None
    ) -> dict[str, ResultMeta]:
        """Subscribe and read on the event loop (`connections.redis_async`): no thread."""
        from celeriac.connections.redis_async import AsyncKeyWaiter, KeysNotReady

        if self._async_waiter is None:
            self._async_waiter = AsyncKeyWaiter(self.url, self.transport_options)
        ids = {self._task_key(tid): tid for tid in task_ids}
        metas: dict[str, ResultMeta] = {}

        def is_ready(key: str, value: bytes) -> bool:
            meta = self.decode_meta(value, task_id=ids[key])
            metas[key] = meta
            return meta.is_ready

        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            await self._async_waiter.wait_for_keys(
                list(ids), is_ready=is_ready, deadline=deadline, delays=self._redis.policy.delays()
            )
        except KeysNotReady:
            missing = ", ".join(
                sorted(
                    tid for key, tid in ids.items() if key not in metas or not metas[key].is_ready
                )
            )
            raise ResultTimeout(f"task(s) {missing} not ready after {timeout} s") from None
        except _SUBSCRIBER_ERRORS as exc:
            raise BackendError(
                f"lost the Redis subscription while waiting for results ({exc}); "
                "check that the server is running"
            ) from exc
        return {tid: metas[key] for key, tid in ids.items()}

    def _read_and_subscribe(
        self, conn: Any, pending: dict[str, str], done: dict[str, ResultMeta]
    ) -> None:
        """Drop the connection's old subscriptions, read the results, and subscribe to
        the keys still pending: one round trip for a short write, two for a long one.

        Redis runs the MGET and the SUBSCRIBE of a write it reads whole back to back,
        so a result stored after the MGET is published after the SUBSCRIBE. A long
        write can be read in pieces, with other clients' commands run between them: a
        result stored and published between its MGET and its SUBSCRIBE would be missed,
        so the keys still pending are read again once every one is subscribed.
        """
        keys = list(pending)
        stale = getattr(conn, "_celeriac_subscribed", 0)
        commands: list[tuple[Any, ...]] = []
        if stale:
            commands.append(("UNSUBSCRIBE",))
        commands += [("MGET", *keys), ("SUBSCRIBE", *keys)]
        packed = pack_commands(conn, commands)
        conn.send_packed_command(packed)
        conn._celeriac_subscribed = 0
        if stale:
            # Skip messages still in flight for old keys, up to the last unsubscribe.
            while True:
                reply = conn.read_response()
                if isinstance(reply, list) and reply[0] == b"unsubscribe" and reply[2] == 0:
                    break
        values = conn.read_response()
        for _ in keys:
            conn.read_response()
        conn._celeriac_subscribed = len(keys)
        for key, value in zip(keys, values, strict=True):
            if value is not None:
                meta = self.decode_meta(value, task_id=pending[key])
                if meta.is_ready:
                    done[pending.pop(key)] = meta
        if pending and sum(map(len, packed)) > _ONE_READ_BYTES:
            self._collect(self.get_many(list(pending.values())), pending, done)

    @staticmethod
    def _collect(
        found: dict[str, ResultMeta], pending: dict[str, str], done: dict[str, ResultMeta]
    ) -> None:
        for key, task_id in list(pending.items()):
            meta = found.get(task_id)
            if meta is not None and meta.is_ready:
                done[task_id] = meta
                del pending[key]

    def _listen(
        self,
        conn: Any,
        pending: dict[str, str],
        done: dict[str, ResultMeta],
        deadline: float | None,
        timeout: float | None,
    ) -> None:
        encoded = {key.encode(): key for key in pending}
        while pending:
            wait = _MAX_SOCKET_WAIT
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = ", ".join(sorted(pending.values()))
                    raise ResultTimeout(f"task(s) {missing} not ready after {timeout} s")
                wait = min(wait, remaining)
            if not conn.can_read(timeout=wait):
                continue
            reply = conn.read_response()
            if not isinstance(reply, list) or len(reply) != 3 or reply[0] != b"message":
                continue
            key = encoded.get(reply[1])
            if key is None or key not in pending:
                continue
            meta = self.decode_meta(reply[2], task_id=pending[key])
            if meta.is_ready:
                done[pending.pop(key)] = meta

    def _subscriber(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        # Health checks send PING, which a subscribed RESP2 connection answers
        # differently; the socket wait notices a dead server by itself.
        conn = new_connection(self._redis.pool(), health_check_interval=0)
        conn.connect()
        return conn

    def _release(self, conn: Any) -> None:
        """Keep the connection for the next wait, still subscribed: its next use drops
        the old subscriptions in the same write as its next read (no round trip here,
        where a caller waits for its result)."""
        with self._lock:
            if not self._redis.closed and len(self._idle) < _MAX_IDLE_SUBSCRIBERS:
                self._idle.append(conn)
                return
        conn.disconnect()

    # -- groups ---------------------------------------------------------------------

    def _set_and_publish(
        self, key: str, value: bytes | int, what: str, *, clear: str | None = None
    ) -> None:
        """SETEX (SET when results never expire) and PUBLISH `key` in one MULTI, after
        deleting `clear` when given."""

        def write(client: redis.Redis) -> None:
            pipe: Any
            with client.pipeline(transaction=True) as pipe:
                if clear is not None:
                    pipe.delete(clear)
                if self._ttl:
                    pipe.execute_command("SETEX", key, self._ttl, value)
                else:
                    pipe.set(key, value)
                pipe.publish(key, value)
                pipe.execute()

        self._redis.run(what, write, unreachable=ResultLost)

    def save_group(self, group_id: str, result: Any) -> None:
        # Celery compat: {"result": as_tuple}, SETEX + PUBLISH like a task result.
        self._set_and_publish(
            self._group_key(group_id), self.encode({"result": result}), f"save group {group_id}"
        )

    def get_group(self, group_id: str) -> Any | None:
        raw = self._redis.run(
            f"read group {group_id}", lambda client: client.get(self._group_key(group_id))
        )
        if raw is None:
            return None
        value = self.decode(raw)
        return value.get("result") if isinstance(value, dict) else None

    def delete_group(self, group_id: str) -> None:
        self._redis.run(
            f"delete group {group_id}", lambda client: client.delete(self._group_key(group_id))
        )

    # -- chords ---------------------------------------------------------------------

    def set_chord_size(self, group_id: str, size: int) -> None:
        # Celery compat: re-applying a frozen chord reuses its group id, so clear a
        # previous run's 'done' claim first (5.7); SETEX + PUBLISH as 5.5 does.
        self._set_and_publish(
            self._group_key(group_id, ".s"),
            size,
            f"set the size of chord {group_id}",
            clear=self._group_key(group_id, ".c"),
        )

    joins_with_store: ClassVar[bool] = True

    def store_and_join(
        self, meta: ResultMeta, group_id: str, *, index: int | None
    ) -> list[ChordPart] | None:
        if self.serializer.name not in ("json", "msgpack"):
            return super().store_and_join(meta, group_id, index=index)
        # One call of the chord script with the result's key added: it stores, then
        # joins. Safe to run again after a dropped connection (the store keeps a
        # SUCCESS, the join counts a part once).
        keys, args = self._chord_call(
            group_id, index=index, task_id=meta.task_id, status=meta.status, result=meta.result
        )
        keys.append(self._task_key(meta.task_id))
        args += [self.encode_meta(meta), self._ttl]
        script = self._redis.script("chord")
        raw = self._redis.raw()
        reply = self._redis.run(
            f"store the result of {meta.task_id} and join chord {group_id}",
            lambda client: raw.script(script, keys, args),
            unreachable=ResultLost,
        )
        return self._chord_parts(group_id, reply)

    def chord_part_return(
        self,
        group_id: str,
        *,
        index: int | None,
        task_id: str,
        status: str,
        result: Any,
    ) -> list[ChordPart] | None:
        keys, args = self._chord_call(
            group_id, index=index, task_id=task_id, status=status, result=result
        )
        script = self._redis.script("chord")
        reply = self._redis.run(
            f"join chord {group_id}",
            lambda client: script(keys=keys, args=args, client=client),
            unreachable=ResultLost,
        )
        return self._chord_parts(group_id, reply)

    def _chord_call(
        self, group_id: str, *, index: int | None, task_id: str, status: str, result: Any
    ) -> tuple[list[str], list[Any]]:
        """Keys and arguments of `redis_chord.lua` for one part."""
        keys = [self._group_key(group_id, suffix) for suffix in (".j", ".t", ".s", ".d")]
        keys += [self._group_key(group_id), self._group_key(group_id, ".c")]
        score = "+inf" if index is None else str(int(index))
        ttl = self._ttl
        args = [
            task_id,
            self.encode([1, task_id, status, result]),
            "1" if self._ordered else "0",
            score,
            ttl,
            ttl,
            # Celery 5.7 keeps 'done' at least 300 s; we keep it as long as results.
            max(ttl, 300) if ttl else 86400,
        ]
        return keys, args

    def _chord_parts(self, group_id: str, reply: list[Any]) -> list[ChordPart] | None:
        """The parts `redis_chord.lua` handed back, None unless this call completed it."""
        if len(reply) < 2:
            return None
        members = reply[1:]
        parts = []
        if self._ordered:
            pairs = zip(members[0::2], members[1::2], strict=True)
            indexed = [(member, float(position)) for member, position in pairs]
        else:
            indexed = [(member, float(n)) for n, member in enumerate(members)]
        values = self._decode_parts([member for member, _ in indexed])
        for (_, position), value in zip(indexed, values, strict=True):
            if not isinstance(value, list) or len(value) != 4:
                raise BackendError(f"chord {group_id} holds a malformed part: {value!r}")
            _, part_id, part_status, part_result = value
            parts.append(ChordPart(position, part_id, part_status, part_result))
        return parts

    def _decode_parts(self, members: list[bytes]) -> list[Any]:
        """Decode every stored part; JSON parts in one call (a 1,000-part chord's join
        is on the path to its body)."""
        if self.serializer.name == "json":
            joined = b"[" + b",".join(members) + b"]"
            decoded = self.decode(joined)
            if isinstance(decoded, list) and len(decoded) == len(members):
                return decoded
        return [self.decode(member) for member in members]


def _compose() -> dict[str, str]:
    """The backend's Lua scripts: `redis_store.lua` defines `store_result`, used by the
    store script and, for a chord part stored and joined at once, the chord script."""
    library = load_script("celeriac.backends", "redis_store.lua")
    chord = load_script("celeriac.backends", "redis_chord.lua")
    return {
        "store": f"{library}\nreturn store_result(KEYS[1], ARGV[1], tonumber(ARGV[2]))\n",
        "chord": f"{library}\n{chord}",
    }


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
