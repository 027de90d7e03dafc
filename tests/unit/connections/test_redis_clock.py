"""`ServerClock`: the server's time carried forward on the monotonic clock."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from celeriac.connections.redis_clock import ServerClock

if TYPE_CHECKING:
    import pytest


def test_it_follows_the_server_not_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[float] = []

    def read() -> float:
        reads.append(1.0)
        return 1_000_000.0

    clock = ServerClock(read, resync=60.0)
    first = clock.time()
    assert 1_000_000.0 <= first < 1_000_005.0
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 7200)
    second = clock.time()
    assert 0 <= second - first < 5
    assert len(reads) == 1


def test_a_server_that_cannot_be_read_is_not_asked_on_every_call() -> None:
    calls: list[int] = []

    def read() -> float:
        calls.append(1)
        raise ConnectionError("down")

    clock = ServerClock(read, resync=60.0)
    before = time.time()
    assert before - 1 <= clock.time() <= time.time() + 1  # the host's clock meanwhile
    clock.time()
    assert len(calls) == 1


def test_it_reads_again_after_the_period() -> None:
    answers = iter([100.0, 5000.0])
    clock = ServerClock(lambda: next(answers), resync=0.0)
    assert clock.time() < 200
    assert clock.time() >= 5000.0
