"""Wall-clock arithmetic in a time zone: naive means UTC, real elapsed time, and the
instants a local time names across DST transitions (gaps and folds)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

UTC = timezone.utc


def local_zone() -> tzinfo:
    """The machine's zone with its DST rules: `TZ`, else /etc/localtime, else the
    current fixed offset (what Celery's tzlocal lookup finds)."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (KeyError, ValueError, OSError):
            pass
    try:
        with open("/etc/localtime", "rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError):
        local = datetime.now().astimezone().tzinfo
        assert local is not None
        return local


def aware(value: datetime, tz: tzinfo) -> datetime:
    """Naive means UTC, shown in `tz`; aware values are kept as they are (Celery compat)."""
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC).astimezone(tz)
    return value


def elapsed(end: datetime, start: datetime) -> timedelta:
    """Real time from `start` to `end` (not wall-clock time within one zone)."""
    return end.astimezone(UTC) - start.astimezone(UTC)


def occurrences(wall: datetime) -> list[datetime]:
    """The real instants a local wall-clock time names (two in a fall-back hour; a time
    in a spring-forward gap is moved forward past the gap)."""
    found = []
    for fold in (0, 1):
        candidate = wall.replace(fold=fold)
        if is_gap(candidate):
            # Moved forward by the size of the gap (what dateutil's resolve_imaginary does).
            before = candidate.replace(fold=0).utcoffset() or timedelta()
            after = candidate.replace(fold=1).utcoffset() or timedelta()
            candidate = (candidate + abs(after - before)).replace(fold=0)
        found.append(candidate.astimezone(UTC))
    return found


def is_gap(value: datetime) -> bool:
    if value.tzinfo is None or value.tzinfo is UTC:
        return False
    roundtrip = value.astimezone(UTC).astimezone(value.tzinfo)
    return roundtrip.replace(tzinfo=None) != value.replace(tzinfo=None)


def localize(naive: datetime, tz: tzinfo) -> datetime:
    """A local wall-clock time in `tz`; in a fall-back hour, the earlier instant."""
    first, second = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    if first.utcoffset() != second.utcoffset() and not is_gap(first):
        return min(first, second, key=lambda v: v.astimezone(UTC))
    return first
