"""Schedules for periodic tasks: `schedule` (an interval), `crontab` and `solar`.

Pure maths with Celery's names and results: `is_due(last_run_at)` returns
`schedstate(is_due, next)` (seconds until the next check) and
`remaining_estimate(last_run_at)` the `timedelta` until the next run, as in
`celery.schedules`; the test suite compares both with stock Celery's answers, DST
transitions included. Beat needs one thing more, a deterministic instant for each run:
`next_run_after(last_run_at)` is the scheduled time of the first run after
`last_run_at`, independent of the current time, so every beat process names a tick the
same way.

Time zones: a schedule reads the app's `timezone` (or UTC with `enable_utc`, or the
system's zone without it), as Celery does; naive datetimes are taken as UTC. Nothing
here sends, sleeps or stores (that is `celeriac.beat`).
"""

from __future__ import annotations

import calendar
import math
import os
import re
from bisect import bisect, bisect_left
from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, Union, runtime_checkable
from zoneinfo import ZoneInfo

from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac

__all__ = [
    "BaseSchedule",
    "ParseException",
    "Schedule",
    "app_timezone",
    "crontab",
    "crontab_parser",
    "maybe_schedule",
    "schedstate",
    "schedule",
    "solar",
]

UTC = timezone.utc

Cronspec = Union[int, str, Iterable[int]]  # noqa: UP007 - a runtime alias on Python 3.10

# Days in each month with the longest February: a day_of_month/month_of_year pair that
# never occurs is refused at construction (Celery compat).
_DAYS_IN_MONTH = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31}
_DAYS_IN_MONTH.update({11: 30, 12: 31})
_WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}


class schedstate(NamedTuple):
    """`is_due`'s answer: run now?, and seconds until the next check."""

    is_due: bool
    next: float


class ParseException(ValueError):
    """A crontab field that cannot be parsed."""


@runtime_checkable
class Schedule(Protocol):
    """What beat needs from a schedule object (Celery's duck type)."""

    def is_due(self, last_run_at: datetime) -> tuple[bool, float]: ...

    def remaining_estimate(self, last_run_at: datetime) -> timedelta: ...


def app_timezone(app: Celeriac | None) -> tzinfo:
    """The zone schedules of `app` work in: `timezone` (in a Django project, Django's
    `TIME_ZONE` when that is unset), else UTC (`enable_utc`), else the system's local
    zone (Celery compat)."""
    if app is None:
        from celeriac.app.base import current_app

        app = current_app()
    name = app.timezone_name()
    if name:
        try:
            return ZoneInfo(name)
        except (KeyError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"setting timezone={name!r} is not a known time zone: write an IANA name "
                "such as 'Europe/London' or 'UTC'"
            ) from exc
    if app.conf.enable_utc:
        return UTC
    return _local_zone()


def _local_zone() -> tzinfo:
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


def _aware(value: datetime, tz: tzinfo) -> datetime:
    """Naive means UTC, shown in `tz`; aware values are kept as they are (Celery compat)."""
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC).astimezone(tz)
    return value


def _elapsed(end: datetime, start: datetime) -> timedelta:
    """Real time from `start` to `end` (not wall-clock time within one zone)."""
    return end.astimezone(UTC) - start.astimezone(UTC)


class BaseSchedule:
    """Shared parts: the clock (`nowfun` or the current time in the app's zone) and the
    app whose time zone applies."""

    def __init__(self, nowfun: Callable[[], datetime] | None = None, app: Any = None) -> None:
        self.nowfun = nowfun
        self._app = app
        self._tz: tzinfo | None = None

    @property
    def app(self) -> Any:
        if self._app is None:
            from celeriac.app.base import current_app

            return current_app()
        return self._app

    @app.setter
    def app(self, app: Any) -> None:
        self._app = app
        self._tz = None

    @property
    def tz(self) -> tzinfo:
        if self._tz is None:
            self._tz = app_timezone(self.app)
        return self._tz

    def now(self) -> datetime:
        if self.nowfun is not None:
            return self.nowfun()
        return datetime.now(UTC).astimezone(self.tz)

    def maybe_make_aware(self, value: datetime) -> datetime:
        return _aware(value, self.tz)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        raise NotImplementedError

    def next_run_after(self, last_run_at: datetime) -> datetime:
        """The scheduled instant of the first run after `last_run_at` (aware)."""
        raise NotImplementedError

    def is_due(self, last_run_at: datetime) -> schedstate:
        remaining = max(self.remaining_estimate(last_run_at).total_seconds(), 0.0)
        if remaining == 0:
            return schedstate(True, max(self.remaining_estimate(self.now()).total_seconds(), 0))
        return schedstate(False, remaining)


# -- intervals ----------------------------------------------------------------------------


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
        future = [c for c in _occurrences(wall) if c > start_utc]
        return min(future, default=wall.astimezone(UTC))
    end_utc = start_utc + every
    wall = _round_down(end_utc.astimezone(start.tzinfo), every).replace(microsecond=0)
    candidates = _occurrences(wall)
    before = [c for c in candidates if c <= end_utc]
    rounded = max(before) if before else min(candidates)
    if every >= timedelta(minutes=1) and rounded <= start_utc:
        unit = timedelta(hours=1) if every >= timedelta(hours=1) else timedelta(minutes=1)
        local_end = end_utc.astimezone(start.tzinfo)
        for extra in (local_end + unit, start + every):
            candidates += _occurrences(_round_down(extra, every).replace(microsecond=0))
        future = [c for c in candidates if c > start_utc]
        inside = [c for c in future if c <= end_utc]
        rounded = max(inside) if inside else min(future, default=end_utc)
    return rounded


def _occurrences(wall: datetime) -> list[datetime]:
    """The real instants a local wall-clock time names (two in a fall-back hour; a time
    in a spring-forward gap is moved forward past the gap)."""
    found = []
    for fold in (0, 1):
        candidate = wall.replace(fold=fold)
        if _is_gap(candidate):
            # Moved forward by the size of the gap (what dateutil's resolve_imaginary does).
            before = candidate.replace(fold=0).utcoffset() or timedelta()
            after = candidate.replace(fold=1).utcoffset() or timedelta()
            candidate = (candidate + abs(after - before)).replace(fold=0)
        found.append(candidate.astimezone(UTC))
    return found


def _is_gap(value: datetime) -> bool:
    if value.tzinfo is None or value.tzinfo is UTC:
        return False
    roundtrip = value.astimezone(UTC).astimezone(value.tzinfo)
    return roundtrip.replace(tzinfo=None) != value.replace(tzinfo=None)


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
        return _elapsed(self.next_run_after(last_run_at), self.maybe_make_aware(self.now()))

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


# -- crontab ------------------------------------------------------------------------------


class crontab_parser:
    """Expand one crontab field (`*/15`, `1,13,30-45,50-59/2`, `mon-fri`) to numbers.

    Args:
        max_: How many values the field has (60 minutes, 24 hours, 7 days, ...).
        min_: The first value (1 for day of month and month of year).
    """

    ParseException = ParseException

    _RANGE_STEPS = re.compile(r"(\w+?)-(\w+)/(\w+)?")
    _RANGE = re.compile(r"(\w+?)-(\w+)")
    _STAR_STEPS = re.compile(r"\*/(\w+)?")
    _STAR = re.compile(r"^\*$")

    def __init__(self, max_: int = 60, min_: int = 0) -> None:
        self.max_ = max_
        self.min_ = min_

    def parse(self, spec: str) -> set[int]:
        found: set[int] = set()
        for part in spec.split(","):
            if not part:
                raise ParseException("empty part")
            found.update(self._part(part))
        return found

    def _part(self, part: str) -> list[int]:
        matched = self._RANGE_STEPS.match(part)
        if matched:
            low, high, step = matched.groups()
            if not step:
                raise ParseException("empty filter")
            return self._range(low, high)[:: int(step)]
        matched = self._RANGE.match(part)
        if matched:
            return self._range(*matched.groups())
        matched = self._STAR_STEPS.match(part)
        if matched:
            (step,) = matched.groups()
            if not step:
                raise ParseException("empty filter")
            return self._all()[:: int(step)]
        if self._STAR.match(part):
            return self._all()
        return [self._number(part)]

    def _all(self) -> list[int]:
        return list(range(self.min_, self.max_ + self.min_))

    def _range(self, low: str, high: str) -> list[int]:
        start, end = self._number(low), self._number(high)
        if end < start:  # wraps around, e.g. fri-mon
            return list(range(start, self.min_ + self.max_)) + list(range(self.min_, end + 1))
        return list(range(start, end + 1))

    def _number(self, text: str) -> int:
        if text.startswith("-"):
            raise ParseException("negative numbers not supported")
        try:
            value = int(text)
        except ValueError:
            key = text[:3].lower()
            if key in _MONTHS:
                value = _MONTHS[key]
            elif key in _WEEKDAYS:
                value = _WEEKDAYS[key]
            else:
                raise ValueError(f"Invalid weekday literal {text!r}.") from None
        highest = self.min_ + self.max_ - 1
        if value > highest:
            raise ValueError(f"Invalid end range: {value} > {highest}.")
        if value < self.min_:
            raise ValueError(f"Invalid beginning range: {value} < {self.min_}.")
        return value


def _expand(spec: Cronspec, max_: int, min_: int = 0) -> set[int]:
    if isinstance(spec, bool):
        raise TypeError(f"crontab fields take int, str or an iterable, not {spec!r}")
    if isinstance(spec, int):
        values = {spec}
    elif isinstance(spec, str):
        values = crontab_parser(max_, min_).parse(spec)
    elif isinstance(spec, Iterable):
        values = set(spec)
    else:
        raise TypeError(
            "Argument cronspec needs to be of any of the following types: int, str, or "
            f"an iterable type. {type(spec)!r} was given."
        )
    for number in values:
        if number >= max_ + min_ or number < min_:
            raise ValueError(
                f"Invalid crontab pattern.  Valid range is {min_}-{max_ - 1 + min_}. "
                f"'{number}' was found."
            )
    return values


class _Jump:
    """A wall-clock jump: replace some fields, move to a weekday, add weeks (the
    arithmetic of Celery's `ffwd`)."""

    def __init__(self, *, weeks: int = 0, weekday: int | None = None, **fields: int) -> None:
        self.weeks = weeks
        self.weekday = weekday
        self.fields = fields

    def apply(self, start: datetime) -> datetime:
        year = self.fields.get("year", start.year)
        month = self.fields.get("month", start.month)
        day = min(calendar.monthrange(year, month)[1], self.fields.get("day", start.day))
        moved = start.replace(**{**self.fields, "year": year, "month": month, "day": day})  # type: ignore[arg-type]
        if self.weekday is not None:
            moved += timedelta(days=(7 - moved.weekday() + self.weekday) % 7)
        return moved + timedelta(days=7 * self.weeks)


class crontab(BaseSchedule):
    """Cron-like schedule: `crontab(minute=0, hour="*/3", day_of_week="mon-fri")`.

    Each field takes an int, a cron string (`*/15`, `1-5`, `mon,wed`, `jan-mar`) or an
    iterable of ints; day_of_week counts Sunday as 0. A day runs when it matches
    day_of_week, day_of_month and month_of_year together (Celery compat, unlike cron's
    "either day field").

    Raises:
        ValueError: a value out of range, or a day_of_month that never occurs in the
            months given (the 30th of February).
    """

    def __init__(
        self,
        minute: Cronspec = "*",
        hour: Cronspec = "*",
        day_of_week: Cronspec = "*",
        day_of_month: Cronspec = "*",
        month_of_year: Cronspec = "*",
        **kwargs: Any,
    ) -> None:
        self._orig_minute = "*" if minute is None else minute
        self._orig_hour = "*" if hour is None else hour
        self._orig_day_of_week = "*" if day_of_week is None else day_of_week
        self._orig_day_of_month = "*" if day_of_month is None else day_of_month
        self._orig_month_of_year = "*" if month_of_year is None else month_of_year
        self._orig_kwargs = kwargs
        self.minute = _expand(self._orig_minute, 60)
        self.hour = _expand(self._orig_hour, 24)
        self.day_of_week = _expand(self._orig_day_of_week, 7)
        self.day_of_month = _expand(self._orig_day_of_month, 31, 1)
        self.month_of_year = _expand(self._orig_month_of_year, 12, 1)
        if not any(
            day <= _DAYS_IN_MONTH[month]
            for month in self.month_of_year
            for day in self.day_of_month
        ):
            raise ValueError(
                f"Invalid crontab: day_of_month {self._orig_day_of_month!r} never occurs in "
                f"month_of_year {self._orig_month_of_year!r}."
            )
        super().__init__(**kwargs)

    @classmethod
    def from_string(cls, expression: str) -> crontab:
        """`crontab.from_string("*/5 9-17 * * mon-fri")`: minute hour dom month dow."""
        parts = expression.split(" ")
        if len(parts) != 5:
            raise ValueError(f"a cron expression has 5 fields, {expression!r} has {len(parts)}")
        minute, hour, day_of_month, month_of_year, day_of_week = parts
        return cls(minute, hour, day_of_week, day_of_month, month_of_year)

    def _jump(self, last: datetime) -> _Jump:
        """From a last run (in the schedule's zone) to the next one, as wall-clock steps."""
        weekday = last.isoweekday() % 7  # Sunday is 0
        this_date = (
            last.month in self.month_of_year
            and last.day in self.day_of_month
            and weekday in self.day_of_week
        )
        if this_date and last.hour in self.hour and last.minute < max(self.minute):
            minute = min(m for m in self.minute if m > last.minute)
            return _Jump(minute=minute, second=0, microsecond=0)
        minute = min(self.minute)
        if this_date and last.hour < max(self.hour):
            hour = min(h for h in self.hour if h > last.hour)
            return _Jump(hour=hour, minute=minute, second=0, microsecond=0)
        hour = min(self.hour)
        if self._orig_day_of_month == "*" and self._orig_month_of_year == "*":
            next_day = min([d for d in self.day_of_week if d > weekday] or self.day_of_week)
            return _Jump(
                weeks=1 if next_day == weekday else 0,
                weekday=(next_day - 1) % 7,
                hour=hour,
                minute=minute,
                second=0,
                microsecond=0,
            )
        return self._next_date(last, hour, minute)

    def _next_date(self, last: datetime, hour: int, minute: int) -> _Jump:
        """The next matching date when day_of_month or month_of_year restricts it."""
        days = sorted(self.day_of_month)
        months = sorted(self.month_of_year)
        year = last.year
        if last.month in self.month_of_year:
            day_index, month_index = bisect(days, last.day), bisect_left(months, last.month)
        else:
            day_index, month_index = 0, bisect(months, last.month) % len(months)

        def unusable() -> bool:
            if day_index == len(days):
                return True
            month, day = months[month_index], days[day_index]
            if day > calendar.monthrange(year, month)[1]:
                return True
            candidate = _localize(datetime(year, month, day, hour, minute), self.tz)
            return candidate < last

        for _ in range(20000):
            if unusable():
                day_index, month_index = 0, month_index + 1
                if month_index == len(months):
                    month_index, year = 0, year + 1
                continue
            if date(year, months[month_index], days[day_index]).isoweekday() % 7 in (
                self.day_of_week
            ):
                return _Jump(
                    year=year,
                    month=months[month_index],
                    day=days[day_index],
                    hour=hour,
                    minute=minute,
                    second=0,
                    microsecond=0,
                )
            day_index += 1
        raise RuntimeError("unable to rollover, time specification is probably invalid")

    def next_run_after(self, last_run_at: datetime) -> datetime:
        last = self.maybe_make_aware(last_run_at).astimezone(self.tz)
        return self._jump(last).apply(last)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        now = self.maybe_make_aware(self.now())
        return _elapsed(self.next_run_after(last_run_at), now)

    def is_due(self, last_run_at: datetime) -> schedstate:
        remaining = self.remaining_estimate(last_run_at).total_seconds()
        due = remaining <= 0
        deadline = self.app.conf.get("beat_cron_starting_deadline")
        stale = False
        if deadline is not None and remaining < 0:
            now = self.maybe_make_aware(self.now())
            since = (now.astimezone(UTC) - timedelta(seconds=deadline, microseconds=1)).astimezone(
                now.tzinfo
            )
            if self.remaining_estimate(since).total_seconds() > 0:
                stale, due = True, False
        if due or stale:
            return schedstate(due, max(self.remaining_estimate(self.now()).total_seconds(), 0))
        return schedstate(False, max(remaining, 0))

    def __repr__(self) -> str:
        return (
            f"<crontab: {self._orig_minute} {self._orig_hour} {self._orig_day_of_month} "
            f"{self._orig_month_of_year} {self._orig_day_of_week} (m/h/dM/MY/d)>"
        )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, crontab):
            return (
                other.month_of_year == self.month_of_year
                and other.day_of_month == self.day_of_month
                and other.day_of_week == self.day_of_week
                and other.hour == self.hour
                and other.minute == self.minute
            )
        return NotImplemented

    def __hash__(self) -> int:
        return hash(repr(self))

    def __reduce__(self) -> tuple[Any, ...]:
        fields = (
            self._orig_minute,
            self._orig_hour,
            self._orig_day_of_week,
            self._orig_day_of_month,
            self._orig_month_of_year,
        )
        return self.__class__, fields, self._orig_kwargs

    def __setstate__(self, state: dict[str, Any]) -> None:
        BaseSchedule.__init__(self, **state)
        self._orig_kwargs = dict(state)


def _localize(naive: datetime, tz: tzinfo) -> datetime:
    """A local wall-clock time in `tz`; in a fall-back hour, the earlier instant."""
    first, second = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    if first.utcoffset() != second.utcoffset() and not _is_gap(first):
        return min(first, second, key=lambda v: v.astimezone(UTC))
    return first


# -- solar --------------------------------------------------------------------------------

# Per event: the horizon, the ephem observer method, and whether the sun's centre
# (rather than its upper limb) crosses it. The same conventions as Celery, so both
# compute the same instants.
_SOLAR_EVENTS: dict[str, tuple[str, str, bool]] = {
    "dawn_astronomical": ("-18", "next_rising", True),
    "dawn_nautical": ("-12", "next_rising", True),
    "dawn_civil": ("-6", "next_rising", True),
    "sunrise": ("-0:34", "next_rising", False),
    "solar_noon": ("0", "next_transit", False),
    "sunset": ("-0:34", "next_setting", False),
    "dusk_civil": ("-6", "next_setting", True),
    "dusk_nautical": ("-12", "next_setting", True),
    "dusk_astronomical": ("-18", "next_setting", True),
}


class solar(BaseSchedule):
    """Run at a solar event seen from a place: `solar("sunset", 51.5, -0.12)`.

    Events: dawn_astronomical, dawn_nautical, dawn_civil, sunrise, solar_noon, sunset,
    dusk_civil, dusk_nautical, dusk_astronomical. Needs the `ephem` library
    (`pip install "celeriac[solar]"`), the one Celery uses, so both give the same times.
    Where an event does not happen for a while (polar day or night) the search goes on
    day by day, for at most `max_search_days`.

    Raises:
        ImproperlyConfigured: ephem is not installed.
        ValueError: an unknown event, or a latitude/longitude out of range.
    """

    max_search_days = 366

    def __init__(self, event: str, lat: float, lon: float, **kwargs: Any) -> None:
        try:
            import ephem
        except ImportError as exc:
            raise ImproperlyConfigured(
                'solar schedules need the ephem library: pip install "celeriac[solar]"'
            ) from exc
        self.ephem = ephem
        if event not in _SOLAR_EVENTS:
            raise ValueError(
                f'Argument event "{event}" is invalid, must be one of '
                f"{', '.join(sorted(_SOLAR_EVENTS))}."
            )
        if not -90 <= lat <= 90:
            raise ValueError(f"Argument latitude {lat} is invalid, must be between -90 and 90.")
        if not -180 <= lon <= 180:
            raise ValueError(f"Argument longitude {lon} is invalid, must be between -180 and 180.")
        self.event, self.lat, self.lon = event, lat, lon
        super().__init__(**kwargs)
        horizon, self.method, self.use_center = _SOLAR_EVENTS[event]
        observer = ephem.Observer()
        observer.lat = str(lat)
        observer.lon = str(lon)
        observer.elev = 0
        observer.horizon = horizon
        observer.pressure = 0  # no refraction model: the horizon values include it
        self.cal = observer

    def next_run_after(self, last_run_at: datetime) -> datetime:
        last = self.maybe_make_aware(last_run_at)
        start_utc = last.astimezone(UTC).replace(tzinfo=None)
        self.cal.date = start_utc
        start = self.ephem.Date(start_utc)
        sun = self.ephem.Sun()
        options = {"use_center": True} if self.use_center else {}
        found = None
        for _ in range(self.max_search_days):
            try:
                found = getattr(self.cal, self.method)(sun, start=start, **options)
                break
            except self.ephem.CircumpolarError:
                start = self.cal.next_antitransit(sun, start=start)
        moment: datetime = (found if found is not None else start).datetime()
        return moment.replace(tzinfo=UTC).astimezone(self.tz)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return _elapsed(self.next_run_after(last_run_at), self.maybe_make_aware(self.now()))

    def __repr__(self) -> str:
        return f"<solar: {self.event} at latitude {self.lat}, longitude: {self.lon}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, solar):
            return (other.event, other.lat, other.lon) == (self.event, self.lat, self.lon)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.event, self.lat, self.lon))

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.event, self.lat, self.lon)


def maybe_schedule(value: Any, relative: bool = False, app: Any = None) -> Any:
    """A schedule from seconds, a `timedelta` or a schedule object (given `app`)."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ImproperlyConfigured(f"schedule of {value!r} seconds is not usable")
        value = timedelta(seconds=value)
    if isinstance(value, timedelta):
        return schedule(value, relative, app=app)
    if isinstance(value, BaseSchedule) and app is not None:
        value.app = app
    return value
