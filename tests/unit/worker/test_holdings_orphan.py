"""An orphaned prefork child exits even when the broker it returns its messages to hangs."""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from celeriac.brokers.memory import MemoryBroker
from celeriac.worker import holdings as holdings_module
from celeriac.worker.holdings import Holdings, Shutdown

if TYPE_CHECKING:
    from collections.abc import Collection


class HungBroker(MemoryBroker):
    """Its `recover` never returns (until the test lets it go)."""

    release = threading.Event()

    def recover(
        self,
        consumer_id: str,
        *,
        running: Collection[str] = (),
        discard: Collection[str] = (),
    ) -> int:
        self.release.wait(30)
        return 0


class Exited(Exception):
    pass


def test_an_orphan_exits_after_a_bounded_wait_when_the_broker_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exits: list[int] = []

    def fake_exit(code: int) -> Any:
        exits.append(code)
        raise Exited

    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setattr(holdings_module, "ORPHAN_LEAVE_WAIT", 0.3)
    broker = HungBroker("memory://orphan-hung")
    holdings = Holdings(broker, Shutdown(), window=1, parent_pid=1)
    started = time.monotonic()
    try:
        with pytest.raises(Exited):
            holdings._orphaned()
    finally:
        HungBroker.release.set()
    assert exits == [70]
    assert time.monotonic() - started < 3.0  # bounded by ORPHAN_LEAVE_WAIT (0.3 s)
