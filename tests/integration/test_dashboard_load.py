"""The dashboard's load script (`benchmarks/dashboard_load.py`) runs to the end on a
small fleet and reports what docs/dashboard.md, "Responsiveness", describes: every
simulated worker online, the events folded, page and live-stream latencies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import require_programs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_the_load_script_measures_a_small_fleet(tmp_path: Path) -> None:
    require_programs("redis-server")
    out = tmp_path / "load.json"
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.dashboard_load",
            "--workers",
            "5",
            "--rate",
            "200",
            "--seconds",
            "3",
            "--warmup",
            "2",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    assert process.returncode == 0, process.stderr
    results = json.loads(out.read_text())
    assert results["workers_shown_online"] == 5
    assert results["task_events_sent_per_s"] > 100
    # Every task event sent reached the dashboard (the heartbeats come on top).
    assert results["events_folded_per_s"] >= results["task_events_sent_per_s"] * 0.9
    assert results["sse_latency"]["n"] > 0
    assert all(page["n"] > 0 for page in results["pages"].values())
