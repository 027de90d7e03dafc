"""The fleet view over a broker that cannot split a queue's depth (the memory broker)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from celeriac.metrics import render

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac


def test_a_broker_without_split_depth_reports_its_size_as_ready(app: Celeriac) -> None:
    @app.task(name="shop.pack")
    def pack() -> None: ...

    for _ in range(2):
        pack.delay()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(render(app).decode())
        for sample in family.samples
    }
    queue = app.conf.task_default_queue
    assert samples[("celeriac_queue_messages", (("queue", queue), ("state", "ready")))] == 2
    assert samples[("celeriac_dead_letters", ())] == 0
    assert samples[("celeriac_workers_present", ())] == 0
