"""celeriac.schedules against stock Celery 5.7's own answers, as the reference.

Each test builds the same schedule both ways, in the same time zone, with the same
`nowfun`, and compares `remaining_estimate` and `is_due` over many instants: ordinary
days, month and year ends, leap days, and the DST transitions of two zones (New York and
Berlin, whose clocks change on different dates), where the classic bugs live.
"""

from __future__ import annotations

import itertools
import warnings
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from celeriac import Celeriac
from celeriac.exceptions import ImproperlyConfigured
from celeriac.schedules import (
    ParseException,
    crontab,
    crontab_parser,
    maybe_schedule,
    schedule,
    solar,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import celery
    import celery.schedules as reference

UTC = timezone.utc
ZONES = ("America/New_York", "Europe/Berlin")

# Instants (UTC) around each zone's 2026 transitions plus ordinary ones.
TRANSITIONS = {
    # New York: 2026-03-08 02:00 -> 03:00 (07:00 UTC); 2026-11-01 02:00 -> 01:00 (06:00 UTC)
    "America/New_York": (datetime(2026, 3, 8, 7, tzinfo=UTC), datetime(2026, 11, 1, 6, tzinfo=UTC)),
    # Berlin: 2026-03-29 02:00 -> 03:00 (01:00 UTC); 2026-10-25 03:00 -> 02:00 (01:00 UTC)
    "Europe/Berlin": (datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC)),
}
ORDINARY = (
    datetime(2026, 1, 31, 23, 59, 30, tzinfo=UTC),
    datetime(2026, 2, 28, 12, 0, tzinfo=UTC),
    datetime(2028, 2, 28, 23, 30, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
    datetime(2026, 6, 15, 8, 17, 3, tzinfo=UTC),
)

CRONTABS: list[dict[str, Any]] = [
    {},
    {"minute": 0},
    {"minute": "*/15"},
    {"minute": 30, "hour": 2},
    {"minute": 0, "hour": "1-3"},
    {"minute": "0,30", "hour": "*/2"},
    {"minute": 0, "hour": 9, "day_of_week": "mon-fri"},
    {"minute": 45, "hour": 23, "day_of_week": "sun"},
    {"minute": 0, "hour": 0, "day_of_month": 1},
    {"minute": 5, "hour": 4, "day_of_month": "29-31"},
    {"minute": 0, "hour": 12, "day_of_month": 29, "month_of_year": 2},
    {"minute": 0, "hour": 3, "month_of_year": "mar,oct,nov"},
    {"minute": "1,13,30-45,50-59/2", "hour": "0,8-17/2"},
    {"minute": 0, "hour": 2, "day_of_week": "fri-mon"},
    {"minute": 15, "hour": 10, "day_of_week": 1, "day_of_month": "1-7"},
]


def apps(zone: str | None, *, enable_utc: bool = True) -> tuple[Celeriac, Any]:
    ours = Celeriac("s", broker="memory://", set_as_current=False)
    ours.conf.update(timezone=zone, enable_utc=enable_utc)
    theirs = celery.Celery("s", set_as_current=False)
    theirs.conf.update(timezone=zone, enable_utc=enable_utc)
    return ours, theirs


def instants(zone: str) -> list[datetime]:
    """Last-run instants around the zone's transitions (every 20 minutes for 6 hours
    either side, plus odd seconds) and on ordinary days, in the zone."""
    tz = ZoneInfo(zone)
    found = []
    for transition in TRANSITIONS[zone]:
        for step in range(-18, 19):
            found.append(transition + timedelta(minutes=20 * step, seconds=step % 3 * 17))
    found.extend(ORDINARY)
    return [moment.astimezone(tz) for moment in found]


def nows(last: datetime) -> list[datetime]:
    return [last + timedelta(seconds=s) for s in (0, 1, 59, 61, 3599, 3601, 7200, 86400 * 3)]


def assert_same(ours: Any, theirs: Any, last: datetime, now: datetime) -> None:
    ours.nowfun = theirs.nowfun = lambda: now
    expected = theirs.remaining_estimate(last)
    got = ours.remaining_estimate(last)
    assert got == expected, f"{ours!r} last={last.isoformat()} now={now.isoformat()}"
    expected_due = theirs.is_due(last)
    got_due = ours.is_due(last)
    assert tuple(got_due) == pytest.approx(tuple(expected_due)), (ours, last, now)


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize(
    "fields", CRONTABS, ids=lambda f: " ".join(f"{k}={v}" for k, v in f.items())
)
def test_crontab_matches_celery_across_dst(zone, fields):
    ours_app, theirs_app = apps(zone)
    ours = crontab(**fields, app=ours_app)
    theirs = reference.crontab(**fields, app=theirs_app)
    for last in instants(zone):
        for now in nows(last):
            assert_same(ours, theirs, last, now)


def test_crontab_naive_last_run_is_utc_as_in_celery():
    ours_app, theirs_app = apps("Europe/Berlin")
    ours = crontab(minute=0, hour=9, app=ours_app)
    theirs = reference.crontab(minute=0, hour=9, app=theirs_app)
    last = datetime(2026, 3, 28, 23, 0)
    now = datetime(2026, 3, 29, 12, 0, tzinfo=UTC)
    assert_same(ours, theirs, last, now)


def test_crontab_in_utc_when_no_timezone_is_set():
    ours_app, theirs_app = apps(None)
    ours = crontab(minute=0, hour=9, app=ours_app)
    theirs = reference.crontab(minute=0, hour=9, app=theirs_app)
    for last in ORDINARY:
        for now in nows(last):
            assert_same(ours, theirs, last, now)


def test_crontab_next_run_after_is_the_scheduled_instant():
    app, _ = apps("America/New_York")
    daily = crontab(minute=30, hour=2, app=app)
    # 02:30 does not exist on 2026-03-08 in New York: the run is at 03:30 EDT.
    last = datetime(2026, 3, 7, 2, 30, tzinfo=ZoneInfo("America/New_York"))
    assert daily.next_run_after(last).astimezone(UTC) == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)


def test_crontab_from_string_matches_celery():
    ours_app, theirs_app = apps("Europe/Berlin")
    ours = crontab.from_string("*/10 9-17 1-7 * mon")
    ours.app = ours_app
    theirs = reference.crontab.from_string("*/10 9-17 1-7 * mon")
    theirs.app = theirs_app
    assert ours == crontab(minute="*/10", hour="9-17", day_of_month="1-7", day_of_week="mon")
    for last in instants("Europe/Berlin")[::5]:
        for now in nows(last):
            assert_same(ours, theirs, last, now)


@pytest.mark.parametrize(
    ("spec", "size", "low"),
    [
        ("*/15", 60, 0),
        ("1,13,30-45,50-59/2", 60, 0),
        ("*", 7, 0),
        ("mon-fri", 7, 0),
        ("fri-mon", 7, 0),
        ("sun,wed", 7, 0),
        ("*/3", 31, 1),
        ("2-12/2", 12, 1),
        ("jan-mar", 12, 1),
        ("22-2", 24, 0),
    ],
)
def test_crontab_parser_matches_celery(spec, size, low):
    assert crontab_parser(size, low).parse(spec) == reference.crontab_parser(size, low).parse(spec)


@pytest.mark.parametrize(
    "fields",
    [
        {"minute": 60},
        {"hour": "24"},
        {"day_of_week": "funday"},
        {"minute": "*/"},
        {"minute": "1,,2"},
        {"minute": "-5"},
        {"day_of_month": 30, "month_of_year": 2},
        {"day_of_month": 0},
        {"minute": 1.5},
    ],
)
def test_crontab_refuses_what_celery_refuses(fields):
    with pytest.raises((ValueError, TypeError, reference.ParseException)) as theirs:
        reference.crontab(**fields)
    # Celery's ParseException is a bare Exception; ours is also a ValueError.
    expected = (
        ParseException if isinstance(theirs.value, reference.ParseException) else type(theirs.value)
    )
    with pytest.raises(expected):
        crontab(**fields)


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize(
    ("every", "relative"),
    [
        (1, False),
        (30.5, False),
        (timedelta(minutes=10), False),
        (timedelta(hours=1), False),
        (timedelta(days=1), False),
        (timedelta(minutes=10), True),
        (timedelta(hours=1), True),
        (timedelta(hours=3), True),
        (timedelta(days=1), True),
    ],
)
def test_interval_matches_celery_across_dst(zone, every, relative):
    ours_app, theirs_app = apps(zone)
    ours = schedule(every, relative=relative, app=ours_app)
    theirs = reference.schedule(every, relative=relative, app=theirs_app)
    for last in instants(zone):
        for now in nows(last):
            assert_same(ours, theirs, last, now)


def test_interval_equality_and_repr_follow_celery():
    assert schedule(10) == schedule(timedelta(seconds=10))
    assert schedule(10) == timedelta(seconds=10)
    assert repr(schedule(3600)) == repr(reference.schedule(3600))


def test_maybe_schedule_turns_numbers_into_intervals():
    app, _ = apps(None)
    made = maybe_schedule(30, app=app)
    assert isinstance(made, schedule)
    assert made.run_every == timedelta(seconds=30)
    assert made.app is app
    with pytest.raises(ImproperlyConfigured):
        maybe_schedule(float("inf"))


PLACES = [(51.5, -0.12), (40.7, -74.0), (-33.9, 151.2), (69.6, 18.9), (0.0, 0.0)]
EVENTS = sorted(reference.solar._all_events)


@pytest.mark.parametrize("event", EVENTS)
def test_solar_matches_celery_to_the_minute(event):
    ours_app, theirs_app = apps("Europe/Berlin")
    starts = [datetime(2026, m, 11, h, tzinfo=UTC) for m in (1, 3, 6, 10, 12) for h in (3, 15)]
    for (lat, lon), last in itertools.product(PLACES, starts):
        ours = solar(event, lat, lon, app=ours_app)
        theirs = reference.solar(event, lat, lon, app=theirs_app)
        now = last + timedelta(hours=1)
        ours.nowfun = theirs.nowfun = lambda now=now: now
        expected = theirs.remaining_estimate(last).total_seconds()
        got = ours.remaining_estimate(last).total_seconds()
        assert abs(got - expected) < 60, (event, lat, lon, last)
        assert ours.is_due(last).is_due == theirs.is_due(last).is_due


def test_solar_refuses_bad_places_and_events():
    with pytest.raises(ValueError, match="latitude"):
        solar("sunset", 91, 0)
    with pytest.raises(ValueError, match="longitude"):
        solar("sunset", 0, 181)
    with pytest.raises(ValueError, match="dusk_civil"):
        solar("teatime", 0, 0)


def test_unknown_timezone_is_a_clear_error():
    app, _ = apps("Mars/Olympus_Mons")
    with pytest.raises(ImproperlyConfigured, match="timezone"):
        crontab(minute=0, app=app).next_run_after(datetime(2026, 1, 1, tzinfo=UTC))


def test_without_enable_utc_schedules_use_the_machine_zone_as_celery():
    ours_app, theirs_app = apps(None, enable_utc=False)
    ours = crontab(minute=0, hour=9, app=ours_app)
    theirs = reference.crontab(minute=0, hour=9, app=theirs_app)
    for last in ORDINARY:
        for now in nows(last):
            assert_same(ours, theirs, last, now)


def test_nowfun_is_the_clock_of_is_due():
    app, _ = apps("UTC")
    moment = datetime(2026, 5, 4, 8, 59, 59, tzinfo=UTC)
    hourly = crontab(minute=0, nowfun=lambda: moment, app=app)
    state = hourly.is_due(datetime(2026, 5, 4, 8, 0, tzinfo=UTC))
    assert state == (False, 1.0)


def test_solar_without_ephem_names_the_extra(monkeypatch: pytest.MonkeyPatch):
    import sys

    monkeypatch.setitem(sys.modules, "ephem", None)
    with pytest.raises(ImproperlyConfigured, match=r"celeriac\[solar\]"):
        solar("sunset", 51.5, 0)
