"""The pytest plugin (loaded by pytest through the `pytest11` entry point).

Fixtures in the style of Celery's `celery.contrib.pytest`, named `celeriac_*` (so both
plugins can be installed side by side):

- `celeriac_app`: an app on a fresh in-memory broker and result backend, current for
  the test (`shared_task`s bind to it); configured by `celeriac_config` (settings) and
  `celeriac_parameters` (arguments of `Celeriac(...)`), importing `celeriac_includes`.
- `celeriac_worker`: a worker running `celeriac_app`'s tasks in a thread of the test
  process, stopped at the end of the test (`celeriac_worker_parameters` go to
  `celeriac.testing.TestWorker`).
- `celeriac_clock`: a fake clock for the app. Request it and `celeriac_app` runs on it:
  a task sent with `countdown=3600` (or a retry an hour later) runs as soon as the test
  calls `celeriac_clock.advance(3600)`, without waiting.
- `celeriac_beat`: the app's periodic tasks (`beat_schedule`, `add_periodic_task`) on
  `celeriac_clock`: `advance(3600)` sends every run due in that hour, one after another,
  as a beat would have in real time.

Override the configuration fixtures in a `conftest.py` or a test module:

```python
@pytest.fixture
def celeriac_config():
    return {"task_serializer": "json", "result_extended": True}
```
"""

from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING, Any

import pytest

from celeriac._time import FakeClock

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from celeriac.app.base import Celeriac
    from celeriac.beat.scheduler import Scheduler
    from celeriac.testing import TestWorker

__all__ = [
    "TestClock",
    "celeriac_app",
    "celeriac_beat",
    "celeriac_clock",
    "celeriac_config",
    "celeriac_includes",
    "celeriac_parameters",
    "celeriac_worker",
    "celeriac_worker_parameters",
]


@pytest.fixture
def celeriac_config() -> Mapping[str, Any]:
    """Settings of `celeriac_app` (override this fixture to change them)."""
    return {}


@pytest.fixture
def celeriac_parameters() -> Mapping[str, Any]:
    """Arguments of `Celeriac(...)` for `celeriac_app` (e.g. `{"main": "proj"}`)."""
    return {}


@pytest.fixture
def celeriac_includes() -> Sequence[str]:
    """Modules `celeriac_app` imports before the test (where your tasks live)."""
    return ()


@pytest.fixture
def celeriac_worker_parameters() -> Mapping[str, Any]:
    """Arguments of `celeriac.testing.TestWorker` (`queues`, `concurrency`, ...)."""
    return {}


class TestClock:
    """A clock that moves only when told; beats attached to it run as time passes.

    Args:
        start: Epoch seconds to start at.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, start: float) -> None:
        self._clock = FakeClock(start)
        self._beats: list[Scheduler] = []

    def time(self) -> float:
        return self._clock.time()

    def monotonic(self) -> float:
        return self._clock.monotonic()

    def attach(self, beat: Scheduler) -> None:
        """Run `beat`'s passes as this clock moves (what `celeriac_beat` does)."""
        self._beats.append(beat)

    def advance(self, seconds: float) -> None:
        """Move `seconds` ahead. Attached beats pass at each moment a run falls due on
        the way, so a 10-second schedule sends six runs in `advance(60)`."""
        target = self.time() + seconds
        while True:
            waits = [beat.tick() for beat in self._beats]
            now = self.time()
            if now >= target:
                return
            self._clock.advance(min([target - now, *(w for w in waits if w > 0)]))


@pytest.fixture
def celeriac_clock() -> TestClock:
    """A clock that moves only when told: `celeriac_clock.advance(seconds)`.

    It starts at the current whole second: ETAs are stored to the microsecond, and a
    start with a fraction could put `countdown=60` a rounding error after `advance(60)`.
    """
    return TestClock(float(int(time.time())))


@pytest.fixture
def celeriac_app(
    request: pytest.FixtureRequest,
    celeriac_config: Mapping[str, Any],
    celeriac_parameters: Mapping[str, Any],
    celeriac_includes: Sequence[str],
) -> Iterator[Celeriac]:
    """An app on its own in-memory broker and backend, current for the test."""
    from celeriac.app import base
    from celeriac.testing import memory_app

    parameters = dict(celeriac_parameters)
    main = parameters.pop("main", "celeriac_tests")
    previous_default = base._default_app
    app = memory_app(main, **parameters)
    app.conf.update(celeriac_config)
    if "celeriac_clock" in request.fixturenames:
        app.clock = request.getfixturevalue("celeriac_clock")
    token = base._current_app.set(app)
    try:
        for module in celeriac_includes:
            importlib.import_module(module)
        yield app
    finally:
        base._current_app.reset(token)
        base._default_app = previous_default
        app.close()


@pytest.fixture
def celeriac_worker(
    celeriac_app: Celeriac, celeriac_worker_parameters: Mapping[str, Any]
) -> Iterator[TestWorker]:
    """A worker for `celeriac_app` in a thread of this process, for the test."""
    from celeriac.testing import start_worker

    with start_worker(celeriac_app, **celeriac_worker_parameters) as worker:
        yield worker


@pytest.fixture
def celeriac_beat(celeriac_app: Celeriac, celeriac_clock: TestClock) -> Iterator[Scheduler]:
    """The app's beat on `celeriac_clock`, in this process: it leads at once, and sends
    what falls due as the test advances the clock."""
    from celeriac.beat.scheduler import Scheduler
    from celeriac.beat.store import MemoryScheduleStore

    scheduler = Scheduler(
        celeriac_app, store=MemoryScheduleStore(clock=celeriac_clock), clock=celeriac_clock
    )
    celeriac_clock.attach(scheduler)
    scheduler.tick()  # take the lease; entries start now
    try:
        yield scheduler
    finally:
        scheduler.close()
