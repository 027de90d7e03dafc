"""The Django, Flask and FastAPI recipes under examples/ run to the end."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

EXPECTED = {
    "django": [
        "GET /orders/A-1001/ -> {'order': 1}",
        "order confirmed by the worker: True",
        'stored result: shop.tasks.confirm SUCCESS "A-1001"',
        "the admin lists the result: True",
        "worker exited with code 0",
    ],
    "flask": ["GET /result -> Hello, Ada!", "worker exited with code 0"],
    "fastapi": [
        "GET /add?x=2&y=3 -> {'sum': 5}",
        "GET /table?n=5 -> {'doubles': [0, 2, 4, 6, 8]}",
        "worker exited with code 0",
    ],
}


@pytest.mark.parametrize("framework", sorted(EXPECTED))
def test_the_recipe_runs(framework: str, tmp_path: Path) -> None:
    target = tmp_path / framework
    shutil.copytree(
        EXAMPLES / framework,
        target,
        ignore=shutil.ignore_patterns("*.db", "*.db-*", "__pycache__"),
    )
    done = subprocess.run(
        [sys.executable, "run_example.py"], cwd=target, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for line in EXPECTED[framework]:
        assert line in done.stdout, f"missing {line!r} in:\n{done.stdout}\n{done.stderr}"
