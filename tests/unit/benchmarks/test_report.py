"""Medians, ratios against Celery and the table of the benchmark (benchmarks/report.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.report import render, summarize
from benchmarks.scenarios import percentile


def _run(contestant: str, metrics: dict[str, float], *, ok: bool = True, **extra: Any):
    return {
        "scenario": extra.get("scenario", "s1"),
        "broker": "redis",
        "results": "redis",
        "contestant": contestant,
        "pool": extra.get("pool", "prefork"),
        "ok": ok,
        "metrics": metrics if ok else {},
    }


def test_cells_are_medians_and_ratios_are_against_celery():
    records = [
        _run("celery", {"drain": 900.0}),
        _run("celery", {"drain": 1000.0}),
        _run("celery", {"drain": 5000.0}),
        _run("celeriac", {"drain": 4000.0}),
        _run("celeriac", {"drain": 5000.0}),
        _run("celeriac", {"drain": 6000.0}),
    ]
    rows = summarize(records, ["celeriac", "celery"], {})
    drain = next(row for row in rows if row.metric.key == "drain")
    assert drain.cells["celery"].median == 1000.0
    assert drain.cells["celeriac"].median == 5000.0
    assert drain.ratio("celeriac") == 5.0


def test_failed_runs_are_left_out_of_the_median_and_counted():
    records = [
        _run("celery", {"p50_ms": 2.0}, scenario="s2"),
        _run("celery", {}, ok=False, scenario="s2"),
    ]
    rows = summarize(records, ["celery"], {})
    p50 = next(row for row in rows if row.metric.key == "p50_ms")
    assert p50.cells["celery"].median == 2.0
    assert (p50.cells["celery"].runs_ok, p50.cells["celery"].runs) == (1, 2)
    assert "(1/2 ok)" in render(rows, ["celery"])


def test_the_best_pool_of_a_contestant_is_shown_in_s4():
    records = [
        _run("celery", {"rate": 800.0, "ideal_fraction": 0.16}, scenario="s4", pool="gevent"),
        _run("celery", {"rate": 1200.0, "ideal_fraction": 0.24}, scenario="s4", pool="threads"),
        _run("celeriac", {"rate": 4000.0, "ideal_fraction": 0.8}, scenario="s4", pool="asyncio"),
    ]
    rows = summarize(records, ["celeriac", "celery"], {})
    rate = next(row for row in rows if row.metric.key == "rate")
    assert rate.cells["celery"].pool == "threads"
    assert rate.ratio("celeriac") == 4000.0 / 1200.0
    share = next(row for row in rows if row.metric.key == "ideal_fraction")
    assert share.cells["celery"].pool == "threads"


def test_s4_sync_has_rows_of_its_own_with_the_best_pool_shown():
    records = [
        _run("celery", _sync(900.0, 0.5), scenario="s4sync", pool="gevent"),
        _run("celery", _sync(700.0, 0.4), scenario="s4sync", pool="threads"),
        _run("celeriac", _sync(3600.0, 0.2), scenario="s4sync", pool="gevent"),
        _run("celeriac", {"rate": 4000.0, "ideal_fraction": 0.8}, scenario="s4", pool="asyncio"),
    ]
    rows = summarize(records, ["celeriac", "celery"], {})
    sync = [row for row in rows if row.scenario == "s4sync"]
    assert [row.metric.key for row in sync] == ["rate", "ideal_fraction", "cpu_ms_per_task"]
    assert sync[0].cells["celery"].pool == "gevent"
    assert sync[0].ratio("celeriac") == 4.0
    # The CPU of the pool compared on rate, not the lowest CPU of any pool.
    assert sync[2].cells["celery"].median == 0.5
    assert sync[2].ratio("celeriac") == 0.4
    table = render(rows, ["celeriac", "celery"], markdown=True)
    assert "| S4 sync | redis | sync sleepers: sleep or socket (tasks/s) |" in table
    assert "3,600 [gevent]" in table


def _sync(rate: float, cpu_ms: float) -> dict[str, float]:
    return {"rate": rate, "ideal_fraction": rate / 5000, "cpu_ms_per_task": cpu_ms}


def test_unsupported_combinations_read_na_and_have_no_ratio():
    records = [_run("celery", {"seconds": 4.0}, scenario="s3")]
    unsupported = {"s3/redis/redis/huey": "n/a (no chord)"}
    rows = summarize(records, ["celery", "huey"], unsupported)
    (row,) = rows
    assert row.ratio("huey") is None
    table = render(rows, ["celery", "huey"], markdown=True)
    assert "huey/celery" in table.splitlines()[0]
    assert "n/a (no chord)" in table


def test_percentiles_interpolate_between_ranks():
    ordered = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(ordered, 50) == 3.0
    assert percentile(ordered, 0) == 1.0
    assert percentile(ordered, 100) == 5.0
    assert percentile(ordered, 95) == 4.8
