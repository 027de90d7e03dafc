"""The Redis broker's key layout: every key name it reads or writes is built here.

Every key below gets the `global_keyprefix` transport option prepended, as kombu does.

kombu's keys (shared with stock Celery peers, written exactly as kombu writes them):
  <queue>, <queue><sep><step>        lists of JSON envelopes; LPUSH in, RPOP out
  _kombu.binding.<exchange>          set of "<routing_key><sep><pattern><sep><queue>"
  _kombu.binding_permanent.<exchange>  the same members (kombu 5.7 keeps tables alive)
  unacked                            hash: delivery tag -> [envelope, exchange, routing_key]
  unacked_index                      zset: delivery tag -> delivery (or renewal) time
  unacked_mutex                      string: held while one consumer sweeps lapsed leases

celeriac's own keys:
  _celeriac.delayed                  zset: queue name -> earliest due time of its ETAs
  _celeriac.delayed.<queue>          zset: envelope -> due time (ETA/countdown messages)
  _celeriac.held.<consumer_id>       hash: tag -> "<lease score>|<queue>" (for recover)
  _celeriac.crashes                  hash: tag -> consumers that died running it
  _celeriac.fetch.<consumer_id>      string: last fetch token + tags (replay after a lost reply)
  _celeriac.publish.<producer>       string: token of a producing thread's last publish
                                     (a retry after a lost reply pushes nothing)
  _celeriac.dead                     hash: dead-letter id -> JSON record
  _celeriac.dead_index               zset: dead-letter id -> time it was dead-lettered
  _celeriac.rate.<key>               string: last reserved rate-limit slot
  _celeriac.presence                 zset: consumer id -> last heartbeat (Redis TIME)
  _celeriac.consumer.<consumer_id>   hash: its presence record (worker, host, pid, pool,
                                     concurrency, started, heartbeat, held, running tags,
                                     and `reaping` while a reaper returns its messages)

The fetch script (`fetch.lua`) builds the priority lists and the delayed sets of the
queues it promotes from the prefix, separator and steps it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

from celeriac.brokers.base import MAX_PRIORITY, MIN_PRIORITY, clamp_priority
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["DEFAULT_PRIORITY_STEPS", "DEFAULT_SEP", "Keys", "Plan"]

BINDING_PREFIX = "_kombu.binding."
BINDING_PERMANENT_PREFIX = "_kombu.binding_permanent."
DELAYED_INDEX = "_celeriac.delayed"
DELAYED_PREFIX = "_celeriac.delayed."
HELD_PREFIX = "_celeriac.held."
CRASHES = "_celeriac.crashes"
LAST_FETCH_PREFIX = "_celeriac.fetch."
DEAD = "_celeriac.dead"
DEAD_INDEX = "_celeriac.dead_index"
PRESENCE = "_celeriac.presence"
CONSUMER_PREFIX = "_celeriac.consumer."

# kombu's defaults, which every peer must share.
DEFAULT_SEP = "\x06\x16"
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)


@final
@dataclass(frozen=True, slots=True)
class Plan:
    """The lists one fetch pops, priority-major, the queue of each, and the keys the
    consumer's wake-up connection watches."""

    queues: tuple[str, ...]
    list_keys: tuple[str, ...]
    list_queues: tuple[str, ...]
    watched: frozenset[bytes]


@final
class Keys:
    """The key names of one broker: fixed ones as attributes, the others by method.

    Args:
        options: The transport options (global_keyprefix, sep, priority_steps,
            unacked_key, unacked_index_key, unacked_mutex_key).
        consumer_id: Whose leases `held` and `last_fetch` name.

    Raises:
        ImproperlyConfigured: priority_steps is empty.
    """

    __slots__ = (
        "_level_suffixes",
        "_plans",
        "_suffixes",
        "consumer",
        "crashes",
        "dead",
        "dead_index",
        "delayed_index",
        "held",
        "index",
        "last_fetch",
        "mutex",
        "prefix",
        "presence",
        "sep",
        "steps",
        "steps_text",
        "unacked",
    )

    def __init__(self, options: Mapping[str, Any], consumer_id: str) -> None:
        prefix = str(options.get("global_keyprefix") or "")
        self.prefix = prefix
        self.sep = str(options.get("sep", DEFAULT_SEP))
        steps = options.get("priority_steps", DEFAULT_PRIORITY_STEPS)
        self.steps: tuple[int, ...] = tuple(sorted(int(step) for step in steps))
        if not self.steps:
            raise ImproperlyConfigured("priority_steps must list at least one priority")
        self.steps_text = ",".join(str(step) for step in self.steps)
        # kombu's list name suffix per step: none for step 0, "<sep><step>" otherwise.
        self._suffixes = tuple("" if step == 0 else f"{self.sep}{step}" for step in self.steps)
        self._level_suffixes = tuple(
            self._suffixes[_step_index(self.steps, level)]
            for level in range(MIN_PRIORITY, MAX_PRIORITY + 1)
        )
        self.unacked = prefix + str(options.get("unacked_key", "unacked"))
        self.index = prefix + str(options.get("unacked_index_key", "unacked_index"))
        self.mutex = prefix + str(options.get("unacked_mutex_key", "unacked_mutex"))
        self.held = self.held_of(consumer_id)
        self.last_fetch = prefix + LAST_FETCH_PREFIX + consumer_id
        self.delayed_index = prefix + DELAYED_INDEX
        self.crashes = prefix + CRASHES
        self.dead = prefix + DEAD
        self.dead_index = prefix + DEAD_INDEX
        self.presence = prefix + PRESENCE
        self.consumer = self.consumer_of(consumer_id)
        self._plans: dict[tuple[str, ...], Plan] = {}

    def list_key(self, queue: str, priority: int | None) -> str:
        """The list a message of `priority` (clamped to 0-9) waits in."""
        return self.prefix + queue + self._level_suffixes[clamp_priority(priority)]

    def step_keys(self, queue: str) -> list[str]:
        """Every priority list of `queue`, highest priority (lowest step) first."""
        return [self.prefix + queue + suffix for suffix in self._suffixes]

    def plan(self, queues: Sequence[str]) -> Plan:
        """What one fetch from `queues` pops, and what its wake-up connection watches
        (kept for the next fetch from the same queues)."""
        key = tuple(queues)
        plan = self._plans.get(key)
        if plan is None:
            list_keys: list[str] = []
            list_queues: list[str] = []
            for suffix in self._suffixes:
                for queue in key:
                    list_keys.append(self.prefix + queue + suffix)
                    list_queues.append(queue)
            watched = frozenset(k.encode() for k in (*list_keys, self.delayed_index))
            plan = Plan(key, tuple(list_keys), tuple(list_queues), watched)
            if len(self._plans) > 64:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def held_of(self, consumer_id: str) -> str:
        """The hash of the leases `consumer_id` holds."""
        return self.prefix + HELD_PREFIX + consumer_id

    def consumer_of(self, consumer_id: str) -> str:
        """The presence record of `consumer_id`."""
        return self.prefix + CONSUMER_PREFIX + consumer_id

    def consumer_prefix(self) -> str:
        """What `consumer_of(id)` puts before the id (the reap script's argument)."""
        return self.prefix + CONSUMER_PREFIX

    def delayed(self, queue: str) -> str:
        """The sorted set of `queue`'s ETA messages."""
        return self.prefix + DELAYED_PREFIX + queue

    def delayed_prefix(self) -> str:
        """What `delayed(queue)` puts before the queue name (the fetch script's argument)."""
        return self.prefix + DELAYED_PREFIX

    def binding(self, exchange: str) -> str:
        """kombu's binding table of `exchange`."""
        return self.prefix + BINDING_PREFIX + exchange

    def binding_permanent(self, exchange: str) -> str:
        """kombu 5.7's second binding table of `exchange`."""
        return self.prefix + BINDING_PERMANENT_PREFIX + exchange


def _step_index(steps: tuple[int, ...], level: int) -> int:
    """kombu's `Channel.priority`: the step is `steps[bisect(steps, n) - 1]`, wrapping to
    the last step when n is below the first one."""
    chosen = len(steps) - 1
    for i, step in enumerate(steps):
        if step <= level:
            chosen = i
        else:
            break
    return chosen
