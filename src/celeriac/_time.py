"""Clocks and the few time conversions the wire format needs.

Instants are aware UTC `datetime`s inside celeriac; durations are float seconds. The wire
carries ISO-8601 strings with an explicit offset (Celery compat).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Protocol, final

__all__ = ["Clock", "FakeClock", "SystemClock", "from_iso", "to_iso", "to_timestamp", "utcnow"]

UTC = timezone.utc


class Clock(Protocol):
    """What celeriac needs from a clock; inject a `FakeClock` in tests."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start that never go back."""
        ...


@final
class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


@final
class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 0.0

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)


def to_iso(value: datetime) -> str:
    """Render an instant as ISO-8601 with an offset; naive values are taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def from_iso(text: str) -> datetime:
    """Parse ISO-8601 (with `Z` or an offset) to an aware datetime; naive means UTC.

    Raises:
        ValueError: `text` is not an ISO-8601 instant.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected an ISO-8601 string, got {type(text).__name__}")
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def to_timestamp(value: datetime | float | timedelta | None, *, now: float) -> float | None:
    """Turn an instant, a number of seconds from `now`, or a timedelta into epoch seconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    if isinstance(value, timedelta):
        return now + value.total_seconds()
    return now + float(value)
