"""How much the dead-letter store keeps: an age, a count, and a body prefix.

Every broker reads three transport options (`broker_transport_options`):

- `dead_letter_ttl`: seconds a dead letter is kept (default 14 days; None keeps them
  until purged);
- `dead_letter_max`: most dead letters kept; the oldest go first (default 100,000;
  None for no cap);
- `dead_letter_body_max`: bytes of a body kept (default 64 KiB). A longer body is cut to
  that prefix and the dead letter records its full size (`DeadLetter.body_size`), so
  `celeriac dlq list|show` say what was trimmed; a trimmed dead letter cannot be replayed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, final

from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Mapping

    from celeriac.protocol.message import Message

__all__ = [
    "DEFAULT_BODY_MAX",
    "DEFAULT_MAX",
    "DEFAULT_TTL",
    "DROPPED_HEADERS",
    "DeadLetterLimits",
    "trimmed_note",
]

#: Header naming the header values a dead letter lost (headers too large to keep).
DROPPED_HEADERS = "x-celeriac-dropped-headers"
DEFAULT_TTL = 14 * 24 * 3600.0
DEFAULT_MAX = 100_000
DEFAULT_BODY_MAX = 64 * 1024


@final
@dataclass(frozen=True, slots=True)
class DeadLetterLimits:
    """The limits of one broker's dead-letter store."""

    ttl: float | None = DEFAULT_TTL
    max_count: int | None = DEFAULT_MAX
    body_max: int = DEFAULT_BODY_MAX

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> DeadLetterLimits:
        """Read the limits from transport options; a bad value is refused by name."""
        ttl = options.get("dead_letter_ttl", DEFAULT_TTL)
        count = options.get("dead_letter_max", DEFAULT_MAX)
        body = options.get("dead_letter_body_max", DEFAULT_BODY_MAX)
        return cls(
            ttl=None if ttl is None else _positive("dead_letter_ttl", ttl, float),
            max_count=None if count is None else int(_positive("dead_letter_max", count, int)),
            body_max=int(_positive("dead_letter_body_max", body, int)),
        )

    def trim(self, message: Message) -> tuple[Message, int | None]:
        """`message` with its body cut to `body_max`, and the full size when it was cut."""
        size = len(message.body)
        if size <= self.body_max:
            return message, None
        return replace(message, body=message.body[: self.body_max]), size

    def cutoff(self, now: float) -> float | None:
        """Dead letters older than this are dropped (None: kept whatever their age)."""
        return None if self.ttl is None else now - self.ttl


def _positive(name: str, value: Any, kind: type[float] | type[int]) -> float:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = -1
    if isinstance(value, bool) or number <= 0:
        raise ImproperlyConfigured(
            f"broker transport option {name} must be a number > 0 (or None), got {value!r}"
        )
    return float(number)


def trimmed_note(kept: int, size: int | None, headers: Mapping[str, Any] | None = None) -> str:
    """What `celeriac dlq` prints about a trimmed dead letter ("" when it is whole)."""
    notes = []
    if size is not None:
        notes.append(f"body trimmed: kept {kept} of {size} bytes")
    dropped = (headers or {}).get(DROPPED_HEADERS)
    if dropped:
        notes.append(f"headers dropped: {', '.join(map(str, dropped))}")
    return "; ".join(notes)
