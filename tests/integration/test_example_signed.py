"""The signed-tasks example runs: a signed task runs, an unsigned one is dead-lettered."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "signed"


def test_the_signed_example_runs_the_signed_task_and_refuses_the_other(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    target = tmp_path / "signed"
    shutil.copytree(
        EXAMPLE, target, ignore=shutil.ignore_patterns("keys", "signed.db*", "__pycache__")
    )
    done = subprocess.run(
        [sys.executable, "run.py"], cwd=target, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "signed:   add.delay(2, 3).get() -> 5" in done.stdout, done.stdout + done.stderr
    assert "unsigned: intruder-1 dead-lettered: ContentDisallowed" in done.stdout
    assert "worker exited with code 0" in done.stdout
