"""The pytest plugin, as a user's test suite sees it (run in a pytest of its own)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

USER_TESTS = """
import time

import pytest

from celeriac import shared_task
from celeriac.exceptions import ResultTimeout

PINGS = []


@shared_task
def ping():
    PINGS.append(1)


@shared_task
def add(x, y):
    return x + y


@shared_task(bind=True, max_retries=1)
def flaky(self, attempts):
    attempts.append(1)
    if len(attempts) == 1:
        raise self.retry(countdown=600)
    return "second try"


@pytest.fixture
def celeriac_config():
    return {
        "task_default_queue": "from-config",
        "result_extended": True,
        "beat_schedule": {"ping-every-10s": {"task": "test_user.ping", "schedule": 10.0}},
    }


def test_worker_runs_shared_tasks(celeriac_app, celeriac_worker):
    assert add.delay(2, 3).get(timeout=10) == 5
    assert celeriac_app.AsyncResult(add.delay(1, 1).id).get(timeout=10) == 2


def test_config_fixture_configures_the_app(celeriac_app):
    assert celeriac_app.conf.task_default_queue == "from-config"
    assert celeriac_app.conf.result_extended is True


def test_each_test_gets_a_fresh_app(celeriac_app):
    assert celeriac_app.broker.size("from-config") == 0


def test_countdown_waits_for_the_fake_clock(celeriac_app, celeriac_worker, celeriac_clock):
    result = add.apply_async((1, 1), countdown=3600)
    with pytest.raises(ResultTimeout):
        result.get(timeout=0.5)
    celeriac_clock.advance(3600)
    assert result.get(timeout=10) == 2


def test_retry_countdown_follows_the_fake_clock(celeriac_app, celeriac_worker, celeriac_clock):
    sent = flaky.delay([])
    with pytest.raises(ResultTimeout):
        sent.get(timeout=0.5)
    celeriac_clock.advance(600)
    assert sent.get(timeout=10) == "second try"


def test_beat_sends_each_run_as_the_clock_advances(
    celeriac_app, celeriac_worker, celeriac_beat, celeriac_clock
):
    PINGS.clear()
    celeriac_clock.advance(35)
    assert celeriac_beat.sent == 3
    deadline = time.monotonic() + 10
    while len(PINGS) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(PINGS) == 3
"""


def test_the_plugins_fixtures_work_in_a_users_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    outcome = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    outcome.assert_outcomes(passed=6)
