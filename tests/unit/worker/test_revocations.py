"""The revocations a worker process follows are read in the backend's times: a host
whose clock is off neither misses recent revocations nor forgets them early."""

from __future__ import annotations

import time

import pytest

from celeriac._time import FakeClock
from celeriac.backends.base import REVOCATION_TTL
from celeriac.backends.memory import MemoryBackend
from celeriac.worker.revocations import Revocations


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend("memory://revocations-test", clock=FakeClock(time.time()))


@pytest.mark.parametrize("step", [-4 * 3600, 4 * 3600], ids=["behind", "ahead"])
def test_a_host_clock_hours_off_still_sees_recent_revocations(
    backend: MemoryBackend, monkeypatch: pytest.MonkeyPatch, step: float
) -> None:
    backend.revoke(["revoked-1"])
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + step)
    revocations = Revocations(backend)
    revocations.refresh()
    assert "revoked-1" in revocations


def test_revocations_are_forgotten_by_the_backends_clock(backend: MemoryBackend) -> None:
    clock = backend.clock
    assert isinstance(clock, FakeClock)
    backend.revoke(["old"])
    revocations = Revocations(backend)
    revocations.refresh()
    clock.advance(REVOCATION_TTL + 1)
    backend.revoke(["new"])
    revocations.refresh()
    assert "new" in revocations
    assert "old" not in revocations
