"""`celeriac -A tasks status`: the live workers and their consumers, from the presence
records in the broker (no worker is asked anything, so it answers while they are busy).
On a broker that keeps no presence records (RabbitMQ) the workers are asked over the
broadcast channel instead (`stats`, as `celery status` pings), within `--timeout`.

Exits 0 when at least one consumer is alive, `EX_UNAVAILABLE` otherwise: usable as a
liveness probe. Records older than `worker_lost_after` belong to consumers presumed dead
(a live one returns their messages soon); they are counted, not listed as alive.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from celeriac._time import UTC
from celeriac.cli import EX_UNAVAILABLE, AppContext, cli, fail
from celeriac.exceptions import BrokerError

if TYPE_CHECKING:
    from celeriac.brokers.base import ConsumerRecord

__all__ = ["status"]


def _as_dict(record: ConsumerRecord) -> dict[str, object]:
    return {
        "consumer_id": record.consumer_id,
        "host": record.host,
        "pid": record.pid,
        "pool": record.pool,
        "concurrency": record.concurrency,
        "last_heartbeat": datetime.fromtimestamp(record.heartbeat, UTC).isoformat(),
        "seconds_since_heartbeat": round(record.age, 3),
        "held": record.held,
        "running": len(record.running),
    }


def _by_broadcast(app: Any, url: str, timeout: float, as_json: bool) -> None:
    """The workers that answer `stats` within `timeout` (stock Celery workers too)."""
    replies: dict[str, Any] = app.control.inspect(timeout=timeout).stats() or {}
    workers = {
        name: {
            "pid": stats.get("pid"),
            "pool": str((stats.get("pool") or {}).get("implementation", "")),
            "concurrency": (stats.get("pool") or {}).get("max-concurrency"),
        }
        for name, stats in sorted(replies.items())
        if isinstance(stats, dict)
    }
    if as_json:
        click.echo(json.dumps({"workers": workers, "source": "remote control"}, indent=2))
    else:
        for name, info in workers.items():
            click.echo(
                f"{name}: pid {info['pid']}, pool {info['pool']}, "
                f"concurrency {info['concurrency']} (answered remote control)"
            )
    if not workers:
        fail(
            f"no worker answered on {url} within {timeout:g}s (this broker keeps no presence "
            "records, so workers were asked over the broadcast channel)",
            EX_UNAVAILABLE,
        )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "-t",
    "--timeout",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds to wait for replies where workers are asked (brokers without presence).",
)
@click.pass_obj
def status(ctx: AppContext, as_json: bool, timeout: float) -> None:
    """List live workers and their consumers; exit non-zero if there are none."""
    app = ctx.app
    broker = app.create_broker()
    try:
        if not broker.supports_presence:
            url = broker.safe_url()
            broker.close()
            _by_broadcast(app, url, timeout, as_json)
            return
        try:
            records = broker.consumers()
        except BrokerError as exc:
            fail(f"cannot read presence records from {broker.safe_url()}: {exc}", EX_UNAVAILABLE)
    finally:
        broker.close()
    lost_after = broker.lost_after
    alive = [r for r in records if r.age <= lost_after]
    silent = len(records) - len(alive)
    workers: dict[str, list[ConsumerRecord]] = defaultdict(list)
    for record in alive:
        workers[record.worker].append(record)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "workers": {
                        name: [_as_dict(r) for r in consumers]
                        for name, consumers in sorted(workers.items())
                    },
                    "silent_consumers": silent,
                },
                indent=2,
            )
        )
    else:
        for name, consumers in sorted(workers.items()):
            pools = ", ".join(sorted({r.pool for r in consumers}))
            total = sum(r.concurrency for r in consumers)
            held = sum(r.held for r in consumers)
            click.echo(
                f"{name}: {len(consumers)} consumer(s), pool {pools}, concurrency {total}, "
                f"{held} message(s) held"
            )
            for r in sorted(consumers, key=lambda r: r.pid):
                click.echo(
                    f"  pid {r.pid} on {r.host}: {r.pool}, concurrency {r.concurrency}, "
                    f"last heartbeat {r.age:.1f}s ago, {r.held} held, {len(r.running)} running"
                )
        if silent:
            click.echo(
                f"{silent} consumer(s) silent for more than worker_lost_after "
                f"({lost_after:g}s): presumed dead, their messages are being returned"
            )
    if not alive:
        fail(f"no live celeriac worker on {broker.safe_url()}", EX_UNAVAILABLE)
