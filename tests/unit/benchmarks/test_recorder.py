"""The completion counters the benchmark's measured tasks keep (benchmarks/agents/recorder.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.agents.recorder import Counters

if TYPE_CHECKING:
    import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]


def _run_tasks(count: int) -> None:
    """Run `count` measured no-op task bodies in a new process (a worker's stand-in)."""
    code = (
        "from benchmarks.agents import recorder\n"
        f"for _ in range({count}):\n"
        "    recorder.task_started()\n"
        "    recorder.task_finished()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)


def test_counters_sum_tasks_of_every_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BENCH_STATS_DIR", str(tmp_path))
    before = time.time()
    _run_tasks(7)
    _run_tasks(3)
    counters = Counters(tmp_path)
    try:
        finished, first, last = counters.read()
    finally:
        counters.close()
    assert finished == 10
    assert first is not None
    assert last is not None
    assert before <= first <= last <= time.time()
    assert len(list(tmp_path.glob("*.stats"))) == 2


def test_counters_see_tasks_finished_after_the_first_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("BENCH_STATS_DIR", str(tmp_path))
    counters = Counters(tmp_path)
    try:
        assert counters.read() == (0, None, None)
        _run_tasks(1)
        assert counters.read()[0] == 1
        _run_tasks(2)
        assert counters.read()[0] == 3
    finally:
        counters.close()


def test_tasks_record_nothing_without_a_stats_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("BENCH_STATS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    _run_tasks(2)
    assert list(tmp_path.iterdir()) == []
