"""`crontab`: Celery's cron-like schedule and its field parser."""

from __future__ import annotations

import calendar
import re
from bisect import bisect, bisect_left
from collections.abc import Iterable
from datetime import date, datetime, timedelta, timezone
from typing import Any, Union

from celeriac.schedules.base import BaseSchedule, ParseException, schedstate
from celeriac.schedules.zones import elapsed, localize

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
            candidate = localize(datetime(year, month, day, hour, minute), self.tz)
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
        return elapsed(self.next_run_after(last_run_at), now)

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
