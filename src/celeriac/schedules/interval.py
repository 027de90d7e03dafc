"""`schedule`: run every interval, optionally on round clock times (`relative`)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import ImproperlyConfigured
from celeriac.schedules.base import BaseSchedule, schedstate
from celeriac.schedules.zones import elapsed, occurrences

if TYPE_CHECKING:
    from collections.abc import Callable

UTC = timezone.utc


def _round_down(value: datetime, every: timedelta) -> datetime:
    """Round to the resolution of `every`: days, hours, minutes, else unchanged."""
    seconds = max(every.total_seconds(), 0)
    fields = (value.year, value.month, value.day, value.hour, value.minute, value.second)
    for keep, unit in ((3, 86400), (4, 3600), (5, 60)):
        if seconds / unit >= 1.0:
            return datetime(*fields[:keep], tzinfo=value.tzinfo, fold=value.fold)  # type: ignore[arg-type,misc]
    return value


def _relative_end(start: datetime, every: timedelta) -> datetime:
    """End of an interval that runs on round clock times (`relative=True`)."""
    start_utc = start.astimezone(UTC)
    if every >= timedelta(days=1):
        # Whole days advance by calendar days: the next local midnight(s) after start.
        wall = _round_down(start + every, every).replace(microsecond=0)
        future = [c for c in occurrences(wall) if c > start_utc]
        return min(future, default=wall.astimezone(UTC))
    end_utc = start_utc + every
    wall = _round_down(end_utc.astimezone(start.tzinfo), every).replace(microsecond=0)
    candidates = occurrences(wall)
    before = [c for c in candidates if c <= end_utc]
    rounded = max(before) if before else min(candidates)
    if every >= timedelta(minutes=1) and rounded <= start_utc:
        unit = timedelta(hours=1) if every >= timedelta(hours=1) else timedelta(minutes=1)
        local_end = end_utc.astimezone(start.tzinfo)
        for extra in (local_end + unit, start + every):
            candidates += occurrences(_round_down(extra, every).replace(microsecond=0))
        future = [c for c in candidates if c > start_utc]
        inside = [c for c in future if c <= end_utc]
        rounded = max(inside) if inside else min(future, default=end_utc)
    return rounded


class schedule(BaseSchedule):
    """Run every `run_every` (seconds or a `timedelta`).

    Args:
        run_every: The interval.
        relative: Run on round clock times of the interval's resolution (an hourly
            schedule at the top of the hour), as Celery's `relative`.
        nowfun: Returns the current time (tests).
        app: The app whose time zone applies.
    """

    def __init__(
        self,
        run_every: float | timedelta | None = None,
        relative: bool = False,
        nowfun: Callable[[], datetime] | None = None,
        app: Any = None,
    ) -> None:
        if run_every is None:
            raise ImproperlyConfigured("schedule() needs run_every: seconds or a timedelta")
        if isinstance(run_every, bool) or not isinstance(run_every, int | float | timedelta):
            raise ImproperlyConfigured(
                f"schedule(run_every={run_every!r}): write seconds (e.g. 30) or a timedelta"
            )
        self.run_every = (
            run_every if isinstance(run_every, timedelta) else timedelta(seconds=run_every)
        )
        self.relative = relative
        super().__init__(nowfun=nowfun, app=app)

    @property
    def seconds(self) -> float:
        return max(self.run_every.total_seconds(), 0)

    def next_run_after(self, last_run_at: datetime) -> datetime:
        start = self.maybe_make_aware(last_run_at)
        if self.relative:
            return _relative_end(start, self.run_every).astimezone(start.tzinfo)
        return (start.astimezone(UTC) + self.run_every).astimezone(start.tzinfo)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return elapsed(self.next_run_after(last_run_at), self.maybe_make_aware(self.now()))

    def is_due(self, last_run_at: datetime) -> schedstate:
        last = self.maybe_make_aware(last_run_at)
        remaining = max(self.remaining_estimate(last).total_seconds(), 0)
        if remaining > 0:
            return schedstate(False, remaining)
        next_check = self.seconds
        if self.relative:
            now = self.maybe_make_aware(self.now()).astimezone(last.tzinfo)
            aligned = self.remaining_estimate(now).total_seconds()
            if aligned > 0:
                next_check = aligned
        return schedstate(True, next_check)

    def __repr__(self) -> str:
        return f"<freq: {_humanize(self.seconds)}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, schedule):
            return self.run_every == other.run_every
        return self.run_every == other

    def __hash__(self) -> int:
        return hash(self.run_every)

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.run_every, self.relative, self.nowfun)


def _humanize(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds / size
            return f"{count:.2f} {unit}{'' if count == 1 else 's'}"
    if seconds > 0:
        return f"{seconds:.2f} second{'' if seconds == 1 else 's'}"
    return "now"
