"""Beat's state on Redis: the lease and entries of one schedule, each change one Lua
script (atomic on the server).

Keys (after the `global_keyprefix` transport option, as every celeriac key):
  _celeriac.beat.<schedule>.lease    string "<owner>|<token>", expiring (PX) with the lease
  _celeriac.beat.<schedule>.token    counter: the last fencing token handed out
  _celeriac.beat.<schedule>.entries  hash: "<entry>\\0fp" fingerprint, "<entry>\\0last" last
                                     run (µs), "<entry>\\0tick" / "<entry>\\0task" a claim

The lease expires by the server's clock (PX), so beat hosts need not agree on the time.

When this Redis is also the broker (same URL, same `global_keyprefix`), a run is claimed,
pushed onto its queue's list and recorded as the last run by one script
(`claim_and_send`): no crash can split them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast, final

from celeriac._crashpoints import crash_point
from celeriac.beat.store import ClaimResult, EntryState, Lease, ScheduleStore
from celeriac.exceptions import CeleriacError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import redis

    from celeriac.brokers.base import Broker, Outgoing

__all__ = ["BeatStoreError", "RedisScheduleStore"]

LEASE_KEY = "_celeriac.beat.{}.lease"
TOKEN_KEY = "_celeriac.beat.{}.token"
ENTRIES_KEY = "_celeriac.beat.{}.entries"
SEP = "\0"

# KEYS: lease, token. ARGV: owner, lease ms.
# -> {1, token, ms} when the caller holds the lease now, {0, holder, remaining ms} if not.
ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if not held then
  local token = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
  return {1, token, tonumber(ARGV[2])}
end
local owner, token = string.match(held, '^(.*)|(%d+)$')
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, tonumber(token), tonumber(ARGV[2])}
end
return {0, owner, redis.call('PTTL', KEYS[1])}
"""

# KEYS: lease. ARGV: owner.
RELEASE = """
local held = redis.call('GET', KEYS[1])
if held and string.match(held, '^(.*)|%d+$') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lease, entries. ARGV: "<owner>|<token>", now, then name, fingerprint pairs.
# -> the whole entries hash (flat), or false when the caller does not lead.
RECONCILE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local sep = '\\0'
local wanted = {}
for i = 3, #ARGV, 2 do wanted[ARGV[i]] = ARGV[i + 1] end
local fields = redis.call('HKEYS', KEYS[2])
for _, field in ipairs(fields) do
  local name = string.match(field, '^(.*)%z[a-z]+$')
  if name and wanted[name] == nil then redis.call('HDEL', KEYS[2], field) end
end
for name, fp in pairs(wanted) do
  if not redis.call('HGET', KEYS[2], name .. sep .. 'last') then
    redis.call('HSET', KEYS[2], name .. sep .. 'last', ARGV[2])
  end
  redis.call('HSET', KEYS[2], name .. sep .. 'fp', fp)
end
return redis.call('HGETALL', KEYS[2])
"""

# KEYS: lease, entries. ARGV: "<owner>|<token>", name, expected last run, tick, task id.
CLAIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'fenced' end
local sep = '\\0'
local last = redis.call('HGET', KEYS[2], ARGV[2] .. sep .. 'last')
if not last then return 'gone' end
if redis.call('HEXISTS', KEYS[2], ARGV[2] .. sep .. 'tick') == 1 then return 'pending' end
if last ~= ARGV[3] then return 'done' end
redis.call('HSET', KEYS[2], ARGV[2] .. sep .. 'tick', ARGV[4], ARGV[2] .. sep .. 'task', ARGV[5])
return 'claimed'
"""

# KEYS: lease, entries, then the lists to push to. ARGV: "<owner>|<token>", name,
# expected last run, tick, then per list: the number of envelopes and the envelopes.
# -> 'sent', or CLAIM's refusals (nothing pushed).
CLAIM_SEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'fenced' end
local sep = '\\0'
local last = redis.call('HGET', KEYS[2], ARGV[2] .. sep .. 'last')
if not last then return 'gone' end
if redis.call('HEXISTS', KEYS[2], ARGV[2] .. sep .. 'tick') == 1 then return 'pending' end
if last ~= ARGV[3] then return 'done' end
local at = 5
for k = 3, #KEYS do
  local count = tonumber(ARGV[at])
  for i = 1, count do redis.call('LPUSH', KEYS[k], ARGV[at + i]) end
  at = at + count + 1
end
redis.call('HSET', KEYS[2], ARGV[2] .. sep .. 'last', ARGV[4])
return 'sent'
"""

# KEYS: lease, entries. ARGV: "<owner>|<token>", name, tick. -> 1 if it may re-send.
RESUME = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[2], ARGV[2] .. '\\0tick') == ARGV[3] then return 1 end
return 0
"""

# KEYS: entries. ARGV: name, tick.
CONFIRM = """
local sep = '\\0'
if redis.call('HGET', KEYS[1], ARGV[1] .. sep .. 'tick') == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1] .. sep .. 'last', ARGV[2])
  redis.call('HDEL', KEYS[1], ARGV[1] .. sep .. 'tick', ARGV[1] .. sep .. 'task')
end
return 0
"""

_SCRIPTS = {
    "acquire": ACQUIRE,
    "release": RELEASE,
    "reconcile": RECONCILE,
    "claim": CLAIM,
    "claim_send": CLAIM_SEND,
    "resume": RESUME,
    "confirm": CONFIRM,
}


class BeatStoreError(CeleriacError):
    """The beat store refused an operation or cannot be reached."""


@final
class RedisScheduleStore(ScheduleStore):
    """One schedule's state on a Redis server (the broker's or the result backend's).

    Args:
        url: The Redis URL.
        options: Transport options (connection settings, `global_keyprefix`).
        name: The schedule's name.
        broker: The app's broker when it is this Redis (same URL and options), so runs
            can be claimed and pushed in one script.
    """

    def __init__(
        self, url: str, options: Mapping[str, Any], *, name: str, broker: Broker | None = None
    ) -> None:
        super().__init__(name)
        self._broker = broker
        from celeriac._urls import redact_url
        from celeriac.connections.redis import RedisClient

        self.where = f"Redis {redact_url(url)}"
        self._redis = RedisClient(
            url, options, scripts=lambda: _SCRIPTS, error=BeatStoreError, unreachable=BeatStoreError
        )
        prefix = str(options.get("global_keyprefix") or "")
        self._lease = prefix + LEASE_KEY.format(name)
        self._token = prefix + TOKEN_KEY.format(name)
        self._entries = prefix + ENTRIES_KEY.format(name)

    def _call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        runner = self._redis.script(script)

        def run(client: redis.Redis) -> Any:
            return runner(keys=keys, args=args, client=client)

        return self._redis.run(f"beat {script}", run)

    def acquire(self, owner: str, *, seconds: float) -> Lease:
        ms = max(1, round(seconds * 1000))
        won, who, remaining = self._call("acquire", [self._lease, self._token], [owner, ms])
        if int(won) == 1:
            return Lease(owner, int(who), int(remaining) / 1000)
        holder = who.decode() if isinstance(who, bytes) else str(who)
        return Lease(holder, 0, max(int(remaining), 0) / 1000)

    def release(self, owner: str) -> None:
        self._call("release", [self._lease], [owner])

    def leader(self) -> str | None:
        held = self._redis.run("beat leader", lambda client: client.get(self._lease))
        return None if held is None else held.decode().rpartition("|")[0]

    def reconcile(
        self, owner: str, token: int, wanted: Mapping[str, str], *, now: int
    ) -> dict[str, EntryState] | None:
        args: list[Any] = [f"{owner}|{token}", str(now)]
        for name, fingerprint in wanted.items():
            args += [name, fingerprint]
        reply = self._call("reconcile", [self._lease, self._entries], args)
        if reply is None:
            return None
        flat = cast("list[bytes]", reply)
        return _states(dict(zip(flat[0::2], flat[1::2], strict=True)))

    def load(self) -> dict[str, EntryState]:
        fields = self._redis.run("beat load", lambda client: client.hgetall(self._entries))
        return _states(fields)

    def claim(
        self, owner: str, token: int, name: str, *, last_run: int, tick: int, task_id: str
    ) -> ClaimResult:
        args = [f"{owner}|{token}", name, str(last_run), str(tick), task_id]
        reply = self._call("claim", [self._lease, self._entries], args)
        return cast("ClaimResult", reply.decode() if isinstance(reply, bytes) else reply)

    @property
    def shares_broker(self) -> bool:
        from celeriac.brokers.redis.broker import RedisBroker

        return isinstance(self._broker, RedisBroker)

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
        from celeriac.brokers.redis.broker import RedisBroker

        broker = self._broker
        if not isinstance(broker, RedisBroker):
            return None
        pushes = broker.plain_pushes(items)
        if pushes is None:
            return None
        keys = [self._lease, self._entries]
        args: list[Any] = [f"{owner}|{token}", name, str(last_run), str(tick)]
        for key, envelopes in pushes:
            keys.append(key)
            args += [len(envelopes), *envelopes]
        crash_point("before_beat_send")
        reply = self._call("claim_send", keys, args)
        result = cast("ClaimResult", reply.decode() if isinstance(reply, bytes) else reply)
        if result == "sent":
            broker.count_published(len(items))
        return result

    def resume(self, owner: str, token: int, name: str, *, tick: int) -> bool:
        args = [f"{owner}|{token}", name, str(tick)]
        return int(self._call("resume", [self._lease, self._entries], args)) == 1

    def confirm(self, name: str, tick: int) -> None:
        self._call("confirm", [self._entries], [name, str(tick)])

    def close(self) -> None:
        self._redis.close()


def _states(fields: Mapping[bytes, bytes]) -> dict[str, EntryState]:
    grouped: dict[str, dict[str, str]] = {}
    for raw_field, raw_value in fields.items():
        name, _, part = raw_field.decode().rpartition(SEP)
        grouped.setdefault(name, {})[part] = raw_value.decode()
    states = {}
    for name, parts in grouped.items():
        if "last" not in parts:
            continue
        tick = parts.get("tick")
        states[name] = EntryState(
            parts.get("fp", ""),
            int(parts["last"]),
            int(tick) if tick is not None else None,
            parts.get("task"),
        )
    return states
