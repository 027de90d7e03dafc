"""The worker-lost walkthrough (`examples/worker_lost`) runs to the end: every task done
after one worker's whole process group was killed, and `celeriac status` showing both
workers before and only the survivor after."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "worker_lost"


def test_the_worker_lost_walkthrough_runs_every_task(tmp_path: Path) -> None:
    target = tmp_path / "worker_lost"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("celeriac.db*", "__pycache__"))
    done = subprocess.run(
        [sys.executable, "run_worker_lost.py"],
        cwd=target,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = done.stdout
    assert done.returncode == 0, done.stdout + done.stderr
    before, _, after = output.partition("SIGKILL to the whole process group")
    assert "victim@" in before
    assert "survivor@" in before
    assert "all 40 tasks done" in after
    assert "victim@" not in after.split("all 40 tasks done", 1)[1]
