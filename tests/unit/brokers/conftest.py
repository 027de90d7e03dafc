"""Fixtures of the SQLite broker tests: a database file and a maker of brokers on it, each
closed at the end of the test."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from celeriac.brokers.sqlite import SQLiteBroker

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from celeriac._time import FakeClock


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broker.db'}"


@pytest.fixture
def brokers(url: str) -> Iterator[list[SQLiteBroker]]:
    made: list[SQLiteBroker] = []
    yield made
    for broker in made:
        broker.close()


@pytest.fixture
def make(url: str, brokers: list[SQLiteBroker]) -> Any:
    def factory(
        consumer_id: str = "consumer-a", *, clock: FakeClock | None = None, **options: Any
    ) -> SQLiteBroker:
        broker = SQLiteBroker(url, transport_options=options, consumer_id=consumer_id, clock=clock)
        brokers.append(broker)
        return broker

    return factory
