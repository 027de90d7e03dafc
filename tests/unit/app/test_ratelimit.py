"""Rate limit strings as Celery writes them."""

from __future__ import annotations

from typing import Any

import pytest

from celeriac.app.ratelimit import parse_rate, rate_interval
from celeriac.exceptions import ImproperlyConfigured


@pytest.mark.parametrize(
    ("value", "per_second"),
    [
        ("10/s", 10.0),
        ("30/m", 0.5),
        ("100/h", 100 / 3600),
        ("0.5/s", 0.5),
        ("10", 10.0),
        (" 6 / M ", 0.1),
        ("10/", 10.0),
        ("60/minute", 1.0),
        ("2/sec", 2.0),
        ("7200/hours", 2.0),
        (5, 5.0),
        (2.5, 2.5),
    ],
)
def test_parse_rate_gives_tasks_per_second(value: Any, per_second: float) -> None:
    assert parse_rate(value) == pytest.approx(per_second)


@pytest.mark.parametrize("value", [None, 0, 0.0, "0", "0/m", "0/h"])
def test_no_rate_or_zero_means_no_limit(value: Any) -> None:
    assert parse_rate(value) is None
    assert rate_interval(value) is None


@pytest.mark.parametrize(
    ("value", "interval"),
    [("10/s", 0.1), ("30/m", 2.0), ("100/h", 36.0), (4, 0.25), ("1/h", 3600.0)],
)
def test_rate_interval_is_the_spacing_between_task_starts(value: Any, interval: float) -> None:
    assert rate_interval(value) == pytest.approx(interval)


@pytest.mark.parametrize("value", ["10/d", "10/ms", "10/x", "10/mins2", "10/s/s"])
def test_unknown_unit_is_refused_naming_it(value: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"has unit .*use s, m or h"):
        parse_rate(value)


@pytest.mark.parametrize("value", ["fast", "", "/m", "ten/m", "1,5/s"])
def test_a_string_that_is_not_a_rate_is_refused(value: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"is not a rate: write '<count>/<s\|m\|h>'"):
        parse_rate(value)


@pytest.mark.parametrize("value", [True, False, [10], {"rate": 1}, b"10/s"])
def test_a_value_of_the_wrong_type_is_refused(value: Any) -> None:
    with pytest.raises(ImproperlyConfigured, match="is not a rate"):
        parse_rate(value)


@pytest.mark.parametrize("value", ["-1/s", -5, "-0.5/m"])
def test_a_negative_rate_is_refused(value: Any) -> None:
    with pytest.raises(ImproperlyConfigured, match="is negative"):
        parse_rate(value)


@pytest.mark.parametrize("value", ["nan/s", "inf/m", float("nan"), float("inf"), "1e999"])
def test_a_non_finite_rate_is_refused(value: Any) -> None:
    with pytest.raises(ImproperlyConfigured, match="not a finite rate"):
        parse_rate(value)


def test_a_rate_too_small_to_space_tasks_by_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="too small"):
        parse_rate(5e-324)


@pytest.mark.parametrize("value", ["10/s", "30/m", "100/h", "0.5/s", "10", "10/", 5, 2.5, "0/m"])
def test_parse_rate_agrees_with_celerys_rate(value: Any) -> None:
    from celery.utils.time import rate as celery_rate

    assert (parse_rate(value) or 0) == pytest.approx(celery_rate(value))
