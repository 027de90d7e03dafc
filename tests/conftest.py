"""Fixtures shared by every suite: an app on its own memory broker, and worker threads.

The test profile: tests (or parameters) marked `full` repeat a path another test already
runs (the same code on another broker, pool or prefetch). They are deselected unless
`TEST_PROFILE=full` (what `make full` sets).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from celeriac.testing import TestWorker, memory_app
from tests.private_servers import node as node  # one private RabbitMQ node per test run

# `pytester` runs the pytest plugin's own tests in a separate pytest process.
pytest_plugins = ("pytester",)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from celeriac import Celeriac

FULL = os.environ.get("TEST_PROFILE", "default") == "full"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Outside the full profile, leave out what is marked `full`."""
    if FULL:
        return
    dropped = [item for item in items if item.get_closest_marker("full")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.get_closest_marker("full")]


class StartWorker(Protocol):
    def __call__(self, target: Celeriac | None = None, **options: Any) -> TestWorker: ...


@pytest.fixture
def app() -> Celeriac:
    """An app on a fresh in-memory broker and backend."""
    return memory_app("tests")


@pytest.fixture
def start_worker(app: Celeriac) -> Iterator[StartWorker]:
    """Start worker threads (`start_worker()` for `app`); all are stopped afterwards."""
    started: list[TestWorker] = []

    def start(target: Celeriac | None = None, **options: Any) -> TestWorker:
        worker = TestWorker(target or app, **options).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
