"""examples/migrating: a Celery 3-style project (old setting names, kombu queues,
annotations, a class-based task, `replace`, `get_task_logger`) runs unchanged."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "migrating"


def test_the_migrating_example_runs_every_task(tmp_path: Path) -> None:
    target = tmp_path / "migrating"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("celeriac.db*", "__pycache__"))
    done = subprocess.run(
        [sys.executable, "run_example.py"], cwd=target, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for expected in (
        "thumbnail -> thumb-of-cat.png",
        "process   -> thumb-of-dog.png",
        "shout     -> HELLO (from tasks.shout)",
        "worker exited with code 0",
    ):
        assert expected in done.stdout, done.stdout + done.stderr
    # The worker consumed both queues of CELERY_QUEUES, and the task logger named the task.
    assert "queues:       default, media" in done.stderr
    assert "tasks.thumbnail[" in done.stderr
    assert "thumbnailing cat.png" in done.stderr
