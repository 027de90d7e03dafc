"""The interoperability suites compare celeriac with stock Celery 5.7.0 (the `dev` group
pins `celery[redis]==5.7.0`): a different Celery or kombu would make them test something
else, so the versions are checked, in this process and in the one a stock worker runs in."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import requires, version

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.integration


def test_stock_celery_is_5_7_0() -> None:
    assert version("celery") == "5.7.0"


def test_kombu_satisfies_what_celery_5_7_0_requires() -> None:
    [kombu] = [
        Requirement(line)
        for line in requires("celery") or []
        if Requirement(line).name == "kombu" and Requirement(line).marker is None
    ]
    assert kombu.specifier.contains(version("kombu"))


def test_stock_workers_start_celery_5_7_0() -> None:
    # Stock workers are started as `sys.executable -m celery ... worker`.
    done = subprocess.run(
        [sys.executable, "-m", "celery", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split()[0] == "5.7.0"
