"""Medians over runs, ratios against Celery, and the table (text or Markdown).

A cell is the median of a contestant's successful runs; a ratio is the contestant's
median divided by Celery's median from the same benchmark invocation (runs of all
contestants are interleaved, so both saw the same machine). Ratios are literal
(contestant / Celery): above 1 is better for rates (↑), below 1 is better for times,
latencies and memory (↓). For S4 and S4 sync each contestant's best pool is shown and
compared.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

__all__ = ["METRICS", "Metric", "Row", "render", "summarize"]

# The column every ratio is taken against: Celery, or Celery with events when only that
# one runs (`-c celeriac,celeriac+E,celery+E`).
REFERENCES = ("celery", "celery+E")


def reference_for(contestants: list[str]) -> str | None:
    """The contestant ratios are taken against, if one of them runs."""
    return next((name for name in REFERENCES if name in contestants), None)


@dataclass(frozen=True, slots=True)
class Metric:
    scenario: str
    key: str
    label: str
    higher_is_better: bool
    style: str  # "rate", "ms", "us", "s", "mib", "percent"


METRICS: tuple[Metric, ...] = (
    Metric("s1", "enqueue", "enqueue, delay() loop (tasks/s)", True, "rate"),
    Metric("s1", "enqueue_bulk", "enqueue, bulk group (tasks/s)", True, "rate"),
    Metric("s1", "drain", "drain, first start to last end (tasks/s)", True, "rate"),
    Metric("s1", "cpu_us_per_task", "worker CPU per task, whole tree (µs)", False, "us"),
    Metric("s1", "peak_rss_mib", "worker peak RSS, whole tree (MiB)", False, "mib"),
    Metric("s2", "p50_ms", "delay().get() p50 (ms)", False, "ms"),
    Metric("s2", "p95_ms", "delay().get() p95 (ms)", False, "ms"),
    Metric("s2", "p99_ms", "delay().get() p99 (ms)", False, "ms"),
    Metric("s3", "seconds", "chord, call to body result (s)", False, "s"),
    Metric("s4", "rate", "sleepers (tasks/s)", True, "rate"),
    Metric("s4", "ideal_fraction", "share of ideal", True, "percent"),
    Metric("s4sync", "rate", "sync sleepers: sleep or socket (tasks/s)", True, "rate"),
    Metric("s4sync", "ideal_fraction", "share of ideal", True, "percent"),
    Metric("s4sync", "cpu_ms_per_task", "worker CPU per task (ms)", False, "ms"),
)
# How a scenario is named in the table (else its name in capitals).
_SCENARIO_LABELS = {"s4sync": "S4 sync"}
# The metric that picks a contestant's best pool in a scenario with several.
_PRIMARY = {"s4": "rate", "s4sync": "rate"}


@dataclass(frozen=True, slots=True)
class Cell:
    median: float | None
    spread: float | None  # (max - min) / 2 / median
    runs_ok: int
    runs: int
    pool: str | None
    note: str = ""


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    broker: str
    metric: Metric
    cells: dict[str, Cell]

    def ratio(self, contestant: str, reference: str = REFERENCES[0]) -> float | None:
        mine, theirs = self.cells.get(contestant), self.cells.get(reference)
        if mine is None or theirs is None or mine.median is None or not theirs.median:
            return None
        return mine.median / theirs.median


def _broker_label(broker: str, results: str) -> str:
    if broker == "rabbitmq" and results == "rpc":
        return "rabbitmq, rpc:// results"
    return broker


def summarize(
    records: list[dict[str, Any]], contestants: list[str], unsupported: dict[str, str]
) -> list[Row]:
    """Rows of medians per (scenario, broker, metric), one cell per contestant.

    `unsupported` maps "scenario/broker/results/contestant[/metric]" to a short reason.
    """
    groups: dict[tuple[str, str, str], dict[str, dict[str, list[dict[str, Any]]]]] = {}
    for record in records:
        key = (record["scenario"], record["broker"], record["results"])
        pools = groups.setdefault(key, {}).setdefault(record["contestant"], {})
        pools.setdefault(record["pool"], []).append(record)
    rows: list[Row] = []
    for (scenario, broker, results), by_contestant in groups.items():
        for metric in (m for m in METRICS if m.scenario == scenario):
            cells: dict[str, Cell] = {}
            for name in contestants:
                why = unsupported.get(f"{scenario}/{broker}/{results}/{name}/{metric.key}")
                why = why or unsupported.get(f"{scenario}/{broker}/{results}/{name}")
                if why:
                    cells[name] = Cell(None, None, 0, 0, None, note=why)
                    continue
                runs_by_pool = by_contestant.get(name)
                if not runs_by_pool:
                    continue
                cells[name] = _best_cell(scenario, metric, runs_by_pool)
            if any(c.median is not None or c.runs for c in cells.values()):
                rows.append(Row(scenario, _broker_label(broker, results), metric, cells))
    return rows


def _best_cell(scenario: str, metric: Metric, pools: dict[str, list[dict[str, Any]]]) -> Cell:
    primary = _PRIMARY.get(scenario, metric.key)
    best: Cell | None = None
    best_primary: float | None = None
    for pool, runs in pools.items():
        cell = _cell(metric.key, pool, runs)
        primary_cell = _cell(primary, pool, runs)
        score = primary_cell.median
        if best is None or (score is not None and (best_primary is None or score > best_primary)):
            best, best_primary = cell, score
    assert best is not None
    return best


def _cell(key: str, pool: str, runs: list[dict[str, Any]]) -> Cell:
    values = [r["metrics"][key] for r in runs if r["ok"] and key in r["metrics"]]
    if not values:
        return Cell(None, None, 0, len(runs), pool, note="failed")
    median = statistics.median(values)
    spread = (max(values) - min(values)) / 2 / median if median else None
    return Cell(median, spread, len(values), len(runs), pool)


def _format(value: float, style: str) -> str:
    if style == "rate":
        return f"{value:,.0f}"
    if style == "ms":
        return f"{value:.2f}"
    if style == "s":
        return f"{value:.2f}"
    if style in ("mib", "us"):
        return f"{value:,.0f}"
    return f"{value:.0%}"


def _cell_text(cell: Cell | None, style: str, *, show_pool: bool) -> str:
    if cell is None:
        return "-"
    if cell.median is None:
        return cell.note or "failed"
    text = _format(cell.median, style)
    if cell.spread is not None and cell.runs_ok > 1:
        text += f" ±{cell.spread:.0%}"
    if show_pool and cell.pool:
        text += f" [{cell.pool}]"
    if cell.runs_ok < cell.runs:
        text += f" ({cell.runs_ok}/{cell.runs} ok)"
    return text


def render(rows: list[Row], contestants: list[str], *, markdown: bool = False) -> str:
    """The table: ratio columns against Celery first, then the medians."""
    reference = reference_for(contestants)
    others = [c for c in contestants if c != reference]
    ratio_columns = [f"{c}/{reference}" for c in others] if reference is not None else []
    header = ["scenario", "broker", "metric", "", *ratio_columns, *contestants]
    body: list[list[str]] = []
    for row in rows:
        arrow = "↑" if row.metric.higher_is_better else "↓"
        ratios = []
        if ratio_columns:
            for name in others:
                ratio = row.ratio(name, reference or REFERENCES[0])
                ratios.append(f"{ratio:.2f}" if ratio is not None else "-")
        values = [
            _cell_text(
                row.cells.get(name), row.metric.style, show_pool=row.scenario in ("s4", "s4sync")
            )
            for name in contestants
        ]
        body.append(
            [
                _SCENARIO_LABELS.get(row.scenario, row.scenario.upper()),
                row.broker,
                row.metric.label,
                arrow,
                *ratios,
                *values,
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    numeric_from = 4

    def line(cells: list[str]) -> str:
        parts = [
            cell.rjust(width) if i >= numeric_from else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(cells) for cells in body)])
