"""Remote control across a mixed fleet, on Redis and on RabbitMQ, against stock Celery 5.7.

- `celery inspect ...` and `celery control ...` (stock CLI, separate processes) act on a
  celeriac prefork worker: ping, registered, stats, active, revoke, rate_limit, shutdown.
- `celeriac inspect ...` and `celeriac control ...` act on a stock `celery worker`.
- A revoke sent either way reaches the other kind of worker: the task never starts.

Both projects share the broker, the result backend (Redis, one key prefix) and the
queue, and use their own `control_exchange`/`event_exchange` names, so commands other
tests broadcast on the same server never reach these workers (and the other way round).
"""

from __future__ import annotations

import json
import socket
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import wait_for
from tests.integration.interop_redis import import_module, stock_worker

if TYPE_CHECKING:
    import subprocess

    from tests.integration.conftest import RunWorker
    from tests.integration.mixed_fleet import Fleet

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.slow]


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stdout + result.stderr
    # Celery prints the JSON object on its first line.
    return json.loads(result.stdout.strip().splitlines()[0])


def test_stock_inspect_sees_a_celeriac_prefork_worker(fleet: Fleet, run_worker: RunWorker) -> None:
    node = f"{fleet.queue}@test"
    worker = run_worker("-c", "2", "-n", node)
    assert _json(fleet.run("celery", "inspect", "ping", "-d", node, "-j")) == {node: {"ok": "pong"}}
    assert _json(fleet.run("celery", "inspect", "registered", "-d", node, "-j")) == {
        node: ["rc.add", "rc.fail", "rc.nap"]
    }
    stats = _json(fleet.run("celery", "inspect", "stats", "-d", node, "-j"))[node]
    assert stats["pool"]["max-concurrency"] == 2
    assert sorted(stats["pool"]["processes"]) == sorted(worker.children())
    assert "total" in stats
    assert stats["broker"]["transport"] == ("redis" if fleet.kind == "redis" else "amqp")

    cproj = import_module(fleet.directory, "cproj")
    try:
        running = cproj.nap.delay(30, "long")
        wait_for(lambda: fleet.started("long"), timeout=20, what="the task to start")
        # Answered by the supervisor while its child works: no task waits for it.
        active = _json(fleet.run("celery", "inspect", "active", "-d", node, "-j"))[node]
        assert [(a["id"], a["name"]) for a in active] == [(running.id, "rc.nap")]
        assert active[0]["worker_pid"] in worker.children()
    finally:
        cproj.app.close()


def test_stock_inspect_reserved_lists_what_prefork_children_prefetched(
    fleet: Fleet, run_worker: RunWorker
) -> None:
    node = f"{fleet.queue}@test"
    cproj = import_module(fleet.directory, "cproj")
    try:
        # Queued first, so the one child's first fetch takes all four: one runs, the
        # others wait in its window (a child fetches no more while its task runs).
        running = cproj.nap.delay(30, "holder")
        waiting = [cproj.add.delay(i, 100) for i in range(3)]
        expected = {w.id for w in waiting}
        worker = run_worker("-c", "1", "--prefetch-multiplier", "4", "-n", node)
        wait_for(lambda: fleet.started("holder"), timeout=20, what="the task to start")

        def reserved() -> list[dict[str, Any]]:
            replies = _json(fleet.run("celery", "inspect", "reserved", "-d", node, "-j"))
            found: list[dict[str, Any]] = replies[node]
            return found

        wait_for(
            lambda: {r["id"] for r in reserved()} == expected,
            timeout=30,
            what="the prefetched tasks listed as reserved",
        )
        listed = sorted(reserved(), key=lambda r: r["args"])
        assert [(r["name"], r["args"], r["worker_pid"]) for r in listed] == [
            ("rc.add", f"({i}, 100)", None) for i in range(3)
        ]
        assert all(r["hostname"] == node and r["acknowledged"] is False for r in listed)
        assert listed[0]["delivery_info"]["routing_key"] == fleet.queue
        # The running one is active, not reserved, with its arguments.
        [active] = _json(fleet.run("celery", "inspect", "active", "-d", node, "-j"))[node]
        assert (active["id"], active["args"]) == (running.id, "(30, 'holder')")
        assert active["worker_pid"] in worker.children()
        assert active["delivery_info"]["routing_key"] == fleet.queue
        # Python API, same shape.
        assert {r["id"] for r in cproj.app.control.inspect([node]).reserved()[node]} == expected
    finally:
        cproj.app.close()


def test_stock_control_revokes_limits_and_stops_a_celeriac_worker(
    fleet: Fleet, run_worker: RunWorker
) -> None:
    node = f"{fleet.queue}@test"
    worker = run_worker("-c", "1", "-n", node)
    cproj = import_module(fleet.directory, "cproj")
    try:
        later = cproj.nap.apply_async((0, "revoked"), countdown=3)
        result = fleet.run("celery", "control", "revoke", later.id, "-d", node, "-j")
        assert result.returncode == 0, result.stdout + result.stderr
        assert later.id in result.stdout
        wait_for(lambda: later.state == "REVOKED", timeout=30, what="REVOKED to be stored")
        # A task sent after it, due after it, runs: so the revoked one had its chance.
        after = cproj.nap.apply_async((0, "after"), countdown=4)
        assert after.get(timeout=30) == "after"
        assert not fleet.started("revoked")

        limited = _json(
            fleet.run("celery", "control", "rate_limit", "rc.add", "10/s", "-d", node, "-j")
        )
        # `celery control --json` prints the list of replies.
        assert limited == [{node: {"ok": "new rate limit set successfully"}}]
        assert cproj.add.delay(2, 3).get(timeout=20) == 5

        # terminate: the child running the task is stopped (and replaced).
        before = set(worker.children())
        running = cproj.nap.delay(60, "terminated")
        wait_for(lambda: fleet.started("terminated"), timeout=20, what="the task to start")
        ended = fleet.run("celery", "control", "terminate", "SIGTERM", running.id, "-d", node)
        assert ended.returncode == 0, ended.stdout + ended.stderr
        wait_for(
            lambda: not before <= set(worker.children()), timeout=20, what="the child replaced"
        )
        assert running.state == "REVOKED"

        # A worker never answers shutdown (stock ones neither), so Celery's CLI reports
        # that no node replied; what counts is that the worker leaves, cleanly.
        fleet.run("celery", "control", "shutdown", "-d", node)
        assert worker.wait(timeout=30) == 0
    finally:
        cproj.app.close()


def test_celeriac_commands_act_on_a_stock_worker(fleet: Fleet) -> None:
    node = f"{fleet.queue}-stock@{socket.gethostname()}"
    with stock_worker(fleet.directory, "stockproj", "-P", "solo", name=f"{fleet.queue}-stock"):
        pong = fleet.run("celeriac", "inspect", "ping", "-d", node, "--json")
        assert _json(pong) == {node: {"ok": "pong"}}
        text = fleet.run("celeriac", "inspect", "registered", "-d", node)
        assert text.returncode == 0, text.stderr
        assert f"->  {node}: OK" in text.stdout
        assert "* rc.add" in text.stdout

        limited = fleet.run("celeriac", "control", "rate_limit", "rc.add", "5/s", "-d", node, "-j")
        assert _json(limited) == {node: {"ok": "new rate limit set successfully"}}

        cproj = import_module(fleet.directory, "cproj")
        try:
            later = cproj.nap.apply_async((0, "stock-revoked"), countdown=3)
            revoked = fleet.run("celeriac", "control", "revoke", later.id, "-d", node, "-j")
            assert later.id in _json(revoked)[node]["ok"]
            after = cproj.nap.apply_async((0, "stock-after"), countdown=4)
            assert after.get(timeout=30) == "stock-after"
            assert not fleet.started("stock-revoked")
            assert later.state == "REVOKED"
        finally:
            cproj.app.close()


def test_inspect_exits_69_when_no_worker_answers(fleet: Fleet) -> None:
    started = time.monotonic()
    result = fleet.run("celeriac", "inspect", "ping", "-d", "nobody@nowhere", "-t", "0.5")
    assert result.returncode == 69
    assert "No nodes replied within time constraint" in result.stderr
    assert time.monotonic() - started < 30
