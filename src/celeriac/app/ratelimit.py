"""Rate limits as Celery writes them: `"10/s"`, `"30/m"`, `"100/h"` or a number per second.

Celeriac spaces task starts evenly (a `"30/m"` task starts at most once every 2 s) and
holds the limit across every worker on the broker; the slot bookkeeping is the broker's
`reserve_rate_slot`, this module only does the arithmetic.
"""

from __future__ import annotations

import math
from typing import Any

from celeriac.exceptions import ImproperlyConfigured

__all__ = ["parse_rate", "rate_interval"]

# Celery writes s, m and h; the spelled-out forms are accepted too. Matched whole: a
# prefix match would read "10/ms" as ten a minute.
_UNITS = {
    "": 1.0,  # Celery compat: "10/" is ten a second
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}


def parse_rate(value: Any) -> float | None:
    """Tasks per second for a rate limit; None (or 0) means no limit.

    Raises:
        ImproperlyConfigured: `value` is not a rate limit.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ImproperlyConfigured(f"rate limit {value!r} is not a rate: write e.g. '10/m'")
    if isinstance(value, int | float):
        per_second = float(value)
    elif isinstance(value, str):
        count, sep, unit = value.strip().partition("/")
        try:
            number = float(count)
        except ValueError:
            raise ImproperlyConfigured(
                f"rate limit {value!r} is not a rate: write '<count>/<s|m|h>', e.g. '10/m'"
            ) from None
        seconds = _UNITS.get(unit.strip().lower()) if sep else 1.0
        if seconds is None:
            raise ImproperlyConfigured(
                f"rate limit {value!r} has unit {unit!r}: use s, m or h (e.g. '10/m')"
            )
        per_second = number / seconds
    else:
        raise ImproperlyConfigured(f"rate limit {value!r} is not a rate: write e.g. '10/m'")
    if not math.isfinite(per_second):
        raise ImproperlyConfigured(f"rate limit {value!r} is not a finite rate: write e.g. '10/m'")
    if per_second < 0:
        raise ImproperlyConfigured(f"rate limit {value!r} is negative")
    if per_second and not math.isfinite(1.0 / per_second):
        raise ImproperlyConfigured(f"rate limit {value!r} is too small to space tasks by")
    return per_second or None


def rate_interval(value: Any) -> float | None:
    """Seconds between two task starts under rate limit `value`, or None for no limit."""
    per_second = parse_rate(value)
    return None if per_second is None else 1.0 / per_second
