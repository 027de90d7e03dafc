"""Fixtures shared by every suite: an app on its own memory broker, and worker threads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pytest

from celeriac.testing import TestWorker, memory_app

# `pytester` runs the pytest plugin's own tests in a separate pytest process.
pytest_plugins = ("pytester",)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from celeriac import Celeriac


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
