"""The shared parts of every schedule: `schedstate`, the `Schedule` duck type,
the app's time zone and `BaseSchedule` (the clock and the app)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from celeriac.exceptions import ImproperlyConfigured
from celeriac.schedules.zones import aware, local_zone

if TYPE_CHECKING:
    from collections.abc import Callable

    from celeriac.app.base import Celeriac


UTC = timezone.utc


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
    return local_zone()


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
        return aware(value, self.tz)

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
