"""Fixtures of the canvas tests: an app on the memory broker with a few tasks, and a spy on
its broker's `publish_many` round trips."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from celeriac.brokers.memory import MemoryBroker
from celeriac.testing import memory_app

if TYPE_CHECKING:
    from celeriac import Celeriac


@pytest.fixture
def app() -> Celeriac:
    app = memory_app("tests")

    @app.task(name="tests.add")
    def add(x: int, y: int = 1) -> int:
        return x + y

    @app.task(name="tests.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="tests.on_error")
    def on_error(request: Any, exc: Exception, traceback: str) -> None:
        pass

    return app


@pytest.fixture
def batches(app: Celeriac) -> list[int]:
    """Sizes of the `publish_many` round trips made (a spy on the memory broker)."""
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    calls: list[int] = []
    original = broker.publish_many

    def counting(items: Any) -> None:
        calls.append(len(items))
        original(items)

    broker.publish_many = counting  # type: ignore[method-assign]
    return calls
