"""The app's time zone: naive `eta`/`expires` datetimes are read in it."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest

from celeriac.exceptions import ImproperlyConfigured
from celeriac.signals import before_task_publish
from celeriac.testing import memory_app

if TYPE_CHECKING:
    from celeriac import Celeriac


def sent_headers(app: Celeriac, **options: Any) -> dict[str, Any]:
    @app.task
    def noop() -> None:
        pass

    seen: list[dict[str, Any]] = []

    def record(headers: dict[str, Any], **kwargs: Any) -> None:
        seen.append(headers)

    before_task_publish.connect(record)
    try:
        noop.apply_async(**options)
    finally:
        before_task_publish.disconnect(record)
    return seen[0]


def test_utc_by_default() -> None:
    assert memory_app().timezone is timezone.utc


def test_a_naive_eta_is_read_in_the_apps_time_zone() -> None:
    app = memory_app(timezone="Asia/Tokyo")
    assert app.timezone == ZoneInfo("Asia/Tokyo")
    headers = sent_headers(app, eta=datetime(2031, 3, 1, 9, 0))
    eta = datetime.fromisoformat(headers["eta"])
    assert eta == datetime(2031, 3, 1, 0, 0, tzinfo=timezone.utc)


def test_a_naive_expires_is_read_in_the_apps_time_zone() -> None:
    app = memory_app(timezone="Asia/Tokyo")
    headers = sent_headers(app, expires=datetime(2031, 3, 1, 9, 0))
    expires = datetime.fromisoformat(headers["expires"])
    assert expires == datetime(2031, 3, 1, 0, 0, tzinfo=timezone.utc)


def test_an_unknown_zone_is_refused() -> None:
    app = memory_app(timezone="Mars/Olympus_Mons")
    with pytest.raises(ImproperlyConfigured, match="Mars/Olympus_Mons"):
        app.timezone  # noqa: B018
