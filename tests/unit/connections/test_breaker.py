"""The circuit breaker: open after failures in a row, one probe after the cool-down,
closed by a success; one log line when it opens and one when it closes."""

from __future__ import annotations

import logging

import pytest
import redis.exceptions as redis_errors

from celeriac.connections.breaker import CircuitBreaker
from celeriac.connections.redis import RetryPolicy, call_with_retry, connection_pool
from celeriac.exceptions import BackendError, ImproperlyConfigured


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_it_opens_after_threshold_failures_in_a_row() -> None:
    clock = Clock()
    breaker = CircuitBreaker("backend", threshold=3, cool_down=5, clock=clock)
    assert not breaker.failed(OSError("a"))
    breaker.succeeded()  # a success starts the count again
    for name in "bc":
        clock.now += 1  # a socket timeout each
        assert not breaker.failed(OSError(name))
    clock.now += 1
    assert breaker.failed(OSError("d"))
    assert breaker.state == "open"
    assert not breaker.allow()


def test_after_the_cool_down_one_probe_goes_through_and_closes_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker("backend", threshold=1, cool_down=5, min_outage=0, clock=clock)
    breaker.failed(OSError("down"))
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow()  # the probe
    assert breaker.state == "half-open"
    assert not breaker.allow()  # only one at a time
    breaker.succeeded()
    assert breaker.stats().state == "closed"
    assert breaker.allow()


def test_a_failed_probe_opens_it_for_another_cool_down() -> None:
    clock = Clock()
    breaker = CircuitBreaker("backend", threshold=2, cool_down=5, clock=clock)
    breaker.failed(OSError("down"))
    breaker.failed(OSError("down"))
    clock.now += 5
    assert breaker.allow()
    assert breaker.failed(OSError("still down"))
    assert breaker.state == "open"
    assert breaker.retry_in() == pytest.approx(5)


def test_it_logs_once_when_it_opens_and_once_when_it_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    breaker = CircuitBreaker("result backend redis://h:1/0", threshold=2, cool_down=1, clock=clock)
    with caplog.at_level(logging.WARNING, logger="celeriac.connections"):
        for _ in range(5):  # open, then failed probes
            breaker.failed(OSError("timed out"))
            clock.now += 2
            breaker.allow()
        breaker.succeeded()
        breaker.succeeded()
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2, lines
    assert "did not answer 2 time(s) in a row" in lines[0]
    assert "answers again" in lines[1]
    assert breaker.stats().times_opened == 1


def test_threshold_zero_never_opens() -> None:
    breaker = CircuitBreaker("backend", threshold=0)
    for _ in range(10):
        assert not breaker.failed(OSError("down"))
    assert breaker.allow()


def test_negative_settings_are_refused_by_name() -> None:
    with pytest.raises(ImproperlyConfigured, match="circuit_breaker_cool_down"):
        CircuitBreaker("backend", cool_down=-1)


def test_the_retry_loop_stops_when_the_breaker_opens_and_then_fails_at_once() -> None:
    pool = connection_pool("redis://h/0")
    clock = Clock()
    breaker = CircuitBreaker("result backend", threshold=3, cool_down=60, clock=clock)
    attempts: list[int] = []
    sleeps: list[float] = []

    def hung() -> str:
        attempts.append(1)
        clock.now += 1  # the socket timeout
        raise redis_errors.TimeoutError("Timeout reading from socket")

    def call() -> str:
        return call_with_retry(
            hung,
            pool=pool,
            policy=RetryPolicy(max_retries=10, interval_start=0.01),
            what="store a result",
            error=BackendError,
            sleep=sleeps.append,
            breaker=breaker,
        )

    with pytest.raises(BackendError, match="failed 3 time"):
        call()
    assert len(attempts) == 3  # not 11
    with pytest.raises(BackendError, match="fail at once"):
        call()
    assert len(attempts) == 3  # the open breaker sent nothing


def test_an_error_the_server_answers_with_counts_as_an_answer() -> None:
    pool = connection_pool("redis://h/0")
    breaker = CircuitBreaker("result backend", threshold=2)
    breaker.failed(OSError("blip"))

    def refused() -> str:
        raise redis_errors.ResponseError("WRONGTYPE")

    with pytest.raises(BackendError, match="WRONGTYPE"):
        call_with_retry(
            refused,
            pool=pool,
            policy=RetryPolicy(),
            what="read",
            error=BackendError,
            breaker=breaker,
        )
    assert breaker.stats().failures == 0


def test_a_restart_shorter_than_the_minimum_outage_is_ridden_out() -> None:
    pool = connection_pool("redis://h/0")
    clock = Clock()
    breaker = CircuitBreaker("result backend", threshold=3, clock=clock)
    attempts: list[int] = []

    def restarting() -> str:
        attempts.append(1)
        if len(attempts) <= 6:  # refused at once, 0.1 s apart: a restart of 0.6 s
            clock.now += 0.1
            raise redis_errors.ConnectionError("Connection refused")
        return "ok"

    result = call_with_retry(
        restarting,
        pool=pool,
        policy=RetryPolicy(max_retries=10, interval_start=0.01),
        what="store a result",
        error=BackendError,
        sleep=lambda seconds: None,
        breaker=breaker,
    )
    assert result == "ok"
    assert breaker.state == "closed"
