"""The gevent walkthrough (`examples/gevent`) runs to the end: a hundred blocking HTTP
calls of half a second each finish together on one worker process, which then shuts down
warm with exit code 0."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gevent"


def test_the_gevent_walkthrough_runs_a_hundred_calls_at_once(tmp_path: Path) -> None:
    target = tmp_path / "gevent"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("celeriac.db*", "__pycache__"))
    done = subprocess.run(
        [sys.executable, "run_gevent.py"],
        cwd=target,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"100 calls of 0.5 s each: ([\d.]+) s .* in 1 worker process", done.stdout)
    assert found, done.stdout
    # 50 s one after another; 2-3 s measured on a loaded two-core machine.
    assert float(found.group(1)) < 15, done.stdout
    assert "worker exited with 0" in done.stdout
