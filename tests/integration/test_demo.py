"""The demo walkthrough (`make demo`) runs to the end and prints the expected results."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"


def test_the_demo_walkthrough_prints_every_result(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    shutil.copytree(DEMO, target, ignore=shutil.ignore_patterns("celeriac.db*", "__pycache__"))
    done = subprocess.run(
        [sys.executable, "run_demo.py"], cwd=target, capture_output=True, text=True, timeout=120
    )
    output = done.stdout
    assert done.returncode == 0, done.stdout + done.stderr
    for expected in (
        "add.delay(4, 4).get(timeout=30)                            -> 8",
        "add.apply_async((2, 3), countdown=1)                       -> '5 after",
        "state PENDING (not stored)",
        "fetch.delay(url) (fails twice, retried)",
        "raised TemporaryError('still down')",
        "chain(add.s(4, 4), multiply.s(10))()                       -> 80",
        "group(add.s(2, 2), add.s(4, 4))()                          -> [4, 8]",
        "chord([add.s(2, 2), add.s(4, 4)])(total.s())               -> 12",
        "'8, callback -> 16'",
        "raised ZeroDivisionError('division by zero')",
        "log_error: task",
        "worker exited with code 0",
    ):
        assert expected in output, f"missing {expected!r} in:\n{output}"
    gaps_line = next(line for line in output.splitlines() if "rate_limit='5/s'" in line)
    gaps = ast.literal_eval(gaps_line.split("->", 1)[1].strip())
    assert min(gaps) >= 0.19
