"""The worker's task metrics: what each signal counts, read back through a registry."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest
from prometheus_client import CollectorRegistry

from celeriac import signals
from celeriac.exceptions import ImproperlyConfigured
from celeriac.metrics.worker import MULTIPROCESS_ENV, TaskMetrics, WorkerMetrics

if TYPE_CHECKING:
    from collections.abc import Iterator

    from celeriac.app.base import Celeriac


@pytest.fixture
def counted() -> Iterator[tuple[TaskMetrics, CollectorRegistry]]:
    metrics = TaskMetrics()
    registry = CollectorRegistry()
    for metric in (metrics.tasks, metrics.runtime, metrics.redeliveries, metrics.crashes):
        registry.register(metric)
    metrics.connect()
    yield metrics, registry
    for signal in (
        signals.task_received,
        signals.task_prerun,
        signals.task_postrun,
        signals.task_revoked,
        signals.task_unknown,
        signals.task_rejected,
        signals.worker_process_lost,
    ):
        signal.disconnect(dispatch_uid=("celeriac.metrics", signal.name))


def test_a_finished_task_is_counted_by_name_and_state_with_its_runtime(
    app: Celeriac, counted: tuple[TaskMetrics, CollectorRegistry]
) -> None:
    _, registry = counted

    @app.task(name="shop.pay")
    def pay() -> None: ...

    signals.task_prerun.send(sender=pay, task_id="t1", task=pay, args=[], kwargs={})
    signals.task_postrun.send(sender=pay, task_id="t1", task=pay, state="FAILURE", retval=None)
    labels = {"task": "shop.pay", "state": "failure"}
    assert registry.get_sample_value("celeriac_tasks_total", labels) == 1
    runtime = {"task": "shop.pay"}
    assert registry.get_sample_value("celeriac_task_runtime_seconds_count", runtime) == 1


def test_unregistered_names_share_one_series(
    counted: tuple[TaskMetrics, CollectorRegistry],
) -> None:
    _, registry = counted
    for name in ("evil.1", "evil.2"):
        signals.task_unknown.send(sender=None, name=name, id=name, message=None, exc=None)
    labels = {"task": "(unregistered)", "state": "unknown"}
    assert registry.get_sample_value("celeriac_tasks_total", labels) == 2


def test_only_a_redelivered_message_counts_as_a_redelivery(
    app: Celeriac, counted: tuple[TaskMetrics, CollectorRegistry]
) -> None:
    _, registry = counted

    @app.task(name="shop.ship")
    def ship() -> None: ...

    for redelivered in (False, True, True):
        request = SimpleNamespace(task=ship, delivery=SimpleNamespace(redelivered=redelivered))
        signals.task_received.send(sender=None, request=request)
    assert registry.get_sample_value("celeriac_redeliveries_total", {"task": "shop.ship"}) == 2


def test_a_child_stopped_by_a_revoke_is_not_a_crash(
    counted: tuple[TaskMetrics, CollectorRegistry],
) -> None:
    _, registry = counted
    for reason in ("crashed", "terminated", "time_limit"):
        signals.worker_process_lost.send(sender=None, pid=1, reason=reason)
    crashes = {
        reason: registry.get_sample_value("celeriac_worker_crashes_total", {"reason": reason})
        for reason in ("crashed", "terminated", "time_limit")
    }
    assert crashes == {"crashed": 1, "terminated": None, "time_limit": 1}


def test_the_worker_endpoint_refuses_when_prometheus_client_came_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(MULTIPROCESS_ENV, raising=False)
    assert "prometheus_client.values" in sys.modules  # imported by this test module
    with pytest.raises(ImproperlyConfigured, match=MULTIPROCESS_ENV):
        WorkerMetrics.prepare()


def test_a_missing_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from celeriac.metrics import render

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImproperlyConfigured, match=r"celeriac\[metrics\]"):
        render(None)  # type: ignore[arg-type]
