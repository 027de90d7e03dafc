"""The fleet's gauges, read from the broker at each scrape (nothing is kept between).

| metric | labels | what |
|---|---|---|
| `celeriac_queue_messages` | queue, state | ready, delayed (ETA) and held (leased) messages |
| `celeriac_queue_oldest_message_age_seconds` | queue | how long the most overdue one waited |
| `celeriac_dead_letters` | | messages in the dead-letter store |
| `celeriac_workers_present` | | workers with a fresh presence record |
| `celeriac_worker_processes_present` | | consuming processes with a fresh record |

The depth comes from `Broker.depth`: a broker that cannot tell delayed or held messages
apart reports only `state="ready"` (its whole size); one without presence records reports
no presence gauges. A scrape that cannot reach the broker fails (Prometheus records the
target as down) rather than reporting zeros.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from prometheus_client.core import Metric

    from celeriac.app.base import Celeriac

__all__ = ["FleetCollector", "default_queues"]


def default_queues(app: Celeriac) -> list[str]:
    """The default queue and every queue in `task_queues`."""
    router = app.router
    return list(dict.fromkeys([router.default_queue, *router.queues]))


class FleetCollector:
    """A Prometheus collector over `app`'s broker (register it with a registry)."""

    def __init__(self, app: Celeriac, *, queues: Sequence[str] | None = None) -> None:
        self.app = app
        self.queues = list(queues) if queues is not None else None

    def collect(self) -> Iterator[Metric]:
        broker = self.app.broker
        queues = self.queues if self.queues is not None else default_queues(self.app)
        messages = GaugeMetricFamily(
            "celeriac_queue_messages",
            "Messages in a queue, by state: ready, delayed (waiting for an ETA), held "
            "(leased to a consumer).",
            labels=["queue", "state"],
        )
        oldest = GaugeMetricFamily(
            "celeriac_queue_oldest_message_age_seconds",
            "Seconds the most overdue message of a queue has waited since it could run "
            "(only messages whose due time the broker records).",
            labels=["queue"],
        )
        for queue in queues:
            depth = broker.depth(queue)
            messages.add_metric([queue, "ready"], depth.ready)
            # None: this broker cannot tell them apart (its ready count includes them).
            if depth.delayed is not None:
                messages.add_metric([queue, "delayed"], depth.delayed)
            if depth.held is not None:
                messages.add_metric([queue, "held"], depth.held)
            try:
                age = broker.overdue_age(queue)
            except NotImplementedError:
                age = None
            if age is not None:
                oldest.add_metric([queue], age)
        yield messages
        yield oldest
        yield GaugeMetricFamily(
            "celeriac_dead_letters",
            "Messages in the dead-letter store.",
            value=broker.dead_letter_count(),
        )
        if broker.supports_presence:
            fresh = [r for r in broker.consumers() if r.age <= broker.lost_after]
            yield GaugeMetricFamily(
                "celeriac_workers_present",
                "Workers with at least one consuming process heard from recently.",
                value=len({record.worker for record in fresh}),
            )
            yield GaugeMetricFamily(
                "celeriac_worker_processes_present",
                "Consuming processes heard from recently.",
                value=len(fresh),
            )
