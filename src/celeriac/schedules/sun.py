"""`solar`: run at a solar event seen from a place (needs `ephem`, as Celery does)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from celeriac.exceptions import ImproperlyConfigured
from celeriac.schedules.base import BaseSchedule
from celeriac.schedules.zones import elapsed

UTC = timezone.utc


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
        return elapsed(self.next_run_after(last_run_at), self.maybe_make_aware(self.now()))

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
