"""Broker-side ETA on RabbitMQ: the per-queue delay ladder (names, routing, declarations).

A message due in `d` seconds is cut into `n = ceil(d / 0.1)` units of 100 ms and sent
down a ladder of 32 levels; level `k` holds it for `2**k` units if bit `k` of `n` is
set and lets it fall through otherwise, so it waits exactly `n` units in total (never
less than `d`, at most 0.1 s more), then lands in its queue through the default
exchange with routing key = the queue name, like any other task message. Layout
(prefix `P`, transport option `delay_prefix`, default `celeriac.delay`):

- topic exchanges `P.31` … `P.0` (durable, shared by every queue); `P.k` is bound to
  `P.(k-1)` with `<31-k *>.0.#`, so a message whose bit `k` is clear falls through;
- for each queue `Q` that ever gets a delayed message, 32 level queues `P.Q.k`
  (durable, `x-message-ttl` = 100 ms * 2**k), bound to `P.k` with
  `<31-k *>.1.<k *>.<Q>`; `P.Q.k` dead-letters to exchange `P.(k-1)` keeping the
  routing key, and `P.Q.0` dead-letters straight to `Q` (default exchange);
- and `P.Q.out` (`x-message-ttl` 0) bound to `P.0` with `<31 *>.0.<Q>`, which
  dead-letters at once to `Q` through the default exchange: a message whose lowest
  levels are clear leaves the ladder the same way as one that ends in `P.Q.0`.

The routing key is `n` as 32 binary digits (most significant first) joined by dots,
then `.Q`; the message is published to `P.h`, `h` the highest set bit of `n`.
Because every level queue is per target queue, `size(Q)` and `purge(Q)` see Q's
delayed messages. Each level queue holds messages with one TTL, so RabbitMQ expires
them in order (no head-of-line blocking, the flaw of per-message TTLs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from celeriac.exceptions import PublishError

__all__ = [
    "DEFAULT_DELAY_PREFIX",
    "LEVELS",
    "UNIT",
    "DelayLayout",
    "DelayRoute",
    "units_for",
]

DEFAULT_DELAY_PREFIX: Final = "celeriac.delay"
# Resolution of broker-side delays: 100 ms. A level's TTL is UNIT_MS * 2**level.
UNIT: Final = 0.1
UNIT_MS: Final = 100
# 32 levels: the longest delay is (2**32 - 1) * 0.1 s, about 13.6 years. RabbitMQ
# refuses a TTL above 10 years, and level 31 is 6.8 years.
LEVELS: Final = 32
MAX_UNITS: Final = 2**LEVELS - 1
# AMQP short strings (queue names, routing keys) hold 255 bytes; the ladder's
# routing key spends 64 of them on the binary digits.
_SHORTSTR: Final = 255


def units_for(seconds: float) -> int:
    """Whole 100 ms units covering `seconds`, rounded up (never early).

    Raises:
        PublishError: the delay is beyond what the ladder can hold.
    """
    units = math.ceil(round(seconds / UNIT, 9))
    if units > MAX_UNITS:
        years = seconds / (365 * 86400)
        raise PublishError(
            f"an ETA {years:.1f} years away is beyond the longest broker-side delay "
            f"({MAX_UNITS * UNIT / (365 * 86400):.1f} years) RabbitMQ can hold"
        )
    return max(units, 1)


@dataclass(frozen=True, slots=True)
class DelayRoute:
    """Where to publish a delayed message: exchange, routing key, and its target queue."""

    exchange: str
    routing_key: str
    queue: str
    units: int


class DelayLayout:
    """Names and arguments of the ladder for one prefix."""

    def __init__(self, prefix: str = DEFAULT_DELAY_PREFIX) -> None:
        self.prefix = prefix

    # -- names ------------------------------------------------------------------------

    def exchange(self, level: int) -> str:
        return f"{self.prefix}.{level}"

    def level_queue(self, queue: str, level: int) -> str:
        return f"{self.prefix}.{queue}.{level}"

    def out_queue(self, queue: str) -> str:
        return f"{self.prefix}.{queue}.out"

    def queues_of(self, queue: str) -> list[str]:
        """Every ladder queue of `queue` (out queue first)."""
        return [self.out_queue(queue)] + [self.level_queue(queue, k) for k in range(LEVELS)]

    def owns(self, queue_name: str) -> bool:
        """True for queues of this ladder (used to tidy dead-letter headers)."""
        return queue_name.startswith(self.prefix + ".")

    # -- routing ----------------------------------------------------------------------

    def check_queue(self, queue: str) -> None:
        """Refuse queue names the ladder cannot route to exactly.

        Raises:
            PublishError: the name is too long, or has a `*`/`#` word (topic wildcards).
        """
        words = queue.split(".")
        if "*" in words or "#" in words:
            raise PublishError(
                f"cannot delay messages for queue {queue!r}: a '*' or '#' word in a queue "
                "name would act as a wildcard in the delay ladder's topic bindings"
            )
        longest = max(
            len(self.level_queue(queue, LEVELS - 1).encode()),
            len(queue.encode()) + 2 * LEVELS,
        )
        if longest > _SHORTSTR:
            raise PublishError(
                f"cannot delay messages for queue {queue!r}: its name is too long for the "
                f"delay ladder (keep queue names under {_SHORTSTR - 2 * LEVELS} bytes)"
            )

    def route(self, queue: str, seconds: float) -> DelayRoute:
        """The exchange and routing key that delay a message for `queue` by `seconds`."""
        units = units_for(seconds)
        digits = format(units, f"0{LEVELS}b")
        top = units.bit_length() - 1
        return DelayRoute(
            exchange=self.exchange(top),
            routing_key=".".join(digits) + "." + queue,
            queue=queue,
            units=units,
        )

    def target_of(self, routing_key: str) -> str | None:
        """The target queue of a ladder routing key (None if it is not one)."""
        words = routing_key.split(".", LEVELS)
        if len(words) != LEVELS + 1 or any(w not in ("0", "1") for w in words[:LEVELS]):
            return None
        return words[LEVELS]

    # -- declarations -----------------------------------------------------------------

    def exchange_bindings(self) -> list[tuple[str, str, str]]:
        """`(destination, source, binding key)` of the shared fall-through chain."""
        bindings = []
        for level in range(LEVELS - 1, 0, -1):
            key = ".".join(["*"] * (LEVELS - 1 - level) + ["0", "#"])
            bindings.append((self.exchange(level - 1), self.exchange(level), key))
        return bindings

    def queue_declarations(self, queue: str) -> list[tuple[str, dict[str, Any], str, str]]:
        """`(queue name, arguments, exchange, binding key)` of `queue`'s ladder."""
        declarations: list[tuple[str, dict[str, Any], str, str]] = []
        out_key = ".".join(["*"] * (LEVELS - 1) + ["0", queue])
        declarations.append(
            (
                self.out_queue(queue),
                {
                    "x-message-ttl": 0,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queue,
                },
                self.exchange(0),
                out_key,
            )
        )
        for level in range(LEVELS):
            key = ".".join(["*"] * (LEVELS - 1 - level) + ["1"] + ["*"] * level + [queue])
            arguments: dict[str, Any] = {"x-message-ttl": UNIT_MS * 2**level}
            if level == 0:
                arguments["x-dead-letter-exchange"] = ""
                arguments["x-dead-letter-routing-key"] = queue
            else:
                arguments["x-dead-letter-exchange"] = self.exchange(level - 1)
            declarations.append(
                (self.level_queue(queue, level), arguments, self.exchange(level), key)
            )
        return declarations
