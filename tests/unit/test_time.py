"""ISO-8601 conversions of the wire format and the clocks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from celeriac._time import FakeClock, SystemClock, from_iso, to_iso, to_timestamp, utcnow

UTC = timezone.utc


def test_from_iso_reads_a_utc_offset() -> None:
    value = from_iso("2026-11-24T04:57:13.295631+00:00")
    assert value == datetime(2026, 11, 24, 4, 57, 13, 295631, tzinfo=UTC)


@pytest.mark.parametrize("text", ["2026-11-24T04:57:13Z", "2026-11-24T04:57:13z"])
def test_from_iso_reads_a_z_suffix_as_utc(text: str) -> None:
    assert from_iso(text) == datetime(2026, 11, 24, 4, 57, 13, tzinfo=UTC)


def test_from_iso_keeps_another_offset() -> None:
    value = from_iso("2026-11-24T06:57:13+02:00")
    assert value.utcoffset() == timedelta(hours=2)
    assert value == datetime(2026, 11, 24, 4, 57, 13, tzinfo=UTC)


def test_from_iso_reads_a_naive_value_as_utc() -> None:
    value = from_iso("2026-11-24T04:57:13")
    assert value.tzinfo is UTC
    assert value == datetime(2026, 11, 24, 4, 57, 13, tzinfo=UTC)


def test_from_iso_reads_what_celery_writes() -> None:
    aware = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-3)))
    assert from_iso(aware.isoformat()) == aware


@pytest.mark.parametrize("text", ["", "tomorrow", "2026-13-01T00:00:00", "2026-01-01T25:00"])
def test_from_iso_refuses_what_is_not_an_instant(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        from_iso(text)


@pytest.mark.parametrize("value", [1700000000, None, b"2026-01-01"])
def test_from_iso_refuses_a_non_string(value: object) -> None:
    with pytest.raises(ValueError, match="expected an ISO-8601 string"):
        from_iso(value)  # type: ignore[arg-type]


def test_to_iso_writes_the_offset() -> None:
    value = datetime(2026, 11, 24, 4, 57, 13, 295631, tzinfo=UTC)
    assert to_iso(value) == "2026-11-24T04:57:13.295631+00:00"
    other = datetime(2026, 11, 24, 6, 0, tzinfo=timezone(timedelta(hours=2)))
    assert to_iso(other) == "2026-11-24T06:00:00+02:00"


def test_to_iso_writes_a_naive_value_as_utc() -> None:
    assert to_iso(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05+00:00"


def test_to_iso_and_from_iso_round_trip() -> None:
    value = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert from_iso(to_iso(value)) == value


def test_utcnow_is_aware_utc() -> None:
    now = utcnow()
    assert now.tzinfo is UTC
    assert abs((now - datetime.now(UTC)).total_seconds()) < 5


def test_to_timestamp_of_an_instant_number_timedelta_and_none() -> None:
    instant = datetime(2026, 1, 1, tzinfo=UTC)
    assert to_timestamp(instant, now=0.0) == instant.timestamp()
    assert to_timestamp(datetime(2026, 1, 1), now=0.0) == instant.timestamp()
    assert to_timestamp(30, now=100.0) == 130.0
    assert to_timestamp(timedelta(minutes=1), now=100.0) == 160.0
    assert to_timestamp(None, now=100.0) is None


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(start=1000.0)
    assert (clock.time(), clock.monotonic()) == (1000.0, 0.0)
    clock.advance(2.5)
    assert (clock.time(), clock.monotonic()) == (1002.5, 2.5)


def test_system_clock_follows_the_real_clock() -> None:
    clock = SystemClock()
    first = clock.monotonic()
    assert clock.monotonic() >= first
    assert abs(clock.time() - datetime.now(UTC).timestamp()) < 5
