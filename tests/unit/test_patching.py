"""`celeriac._patching`: which command lines patch with gevent before anything else."""

from __future__ import annotations

import sys

import pytest

from celeriac import _patching
from celeriac._patching import pool_on_command_line


@pytest.mark.parametrize(
    ("args", "pool"),
    [
        (["-A", "tasks", "worker", "-P", "gevent"], "gevent"),
        (["-A", "tasks", "worker", "-Pgevent", "-c", "100"], "gevent"),
        (["-A", "tasks", "worker", "--pool", "gevent"], "gevent"),
        (["-A", "tasks", "worker", "--pool=gevent"], "gevent"),
        (["-A", "tasks", "worker", "-P", "threads"], "threads"),
        (["-A", "tasks", "worker"], None),
        (["-A", "tasks", "worker", "-P"], None),
        # Not the worker command: nothing to patch for.
        (["-A", "tasks", "inspect", "active", "-P", "gevent"], None),
    ],
)
def test_the_pool_is_read_from_the_worker_command_line(args: list[str], pool: str | None) -> None:
    assert pool_on_command_line(args) == pool


def test_only_the_celeriac_command_patches(monkeypatch: pytest.MonkeyPatch) -> None:
    # A program (here: pytest) whose arguments happen to read like the worker's.
    monkeypatch.setattr(sys, "argv", ["pytest", "worker", "-P", "gevent"])
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "pytest", "worker", "-P", "gevent"])
    assert _patching.patch_for_command_line() is False
