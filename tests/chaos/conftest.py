"""Fixtures of the reliability suite: profile, seed, and the integration fixtures.

`CHAOS_PROFILE=full` (what `make chaos` sets) runs the full sizes; the default is the
small profile CI runs. `CHAOS_SEED` replays a run: every test prints the seed its fault
schedule came from.
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING

import pytest

from tests.chaos.chaos_tasks import SOURCE
from tests.chaos.ledger import Ledger
from tests.integration.conftest import (  # noqa: F401  (fixtures used by chaos tests)
    _reset_kombu_pools,
    broker_env,
    run_worker,
    tasks_dir,
    write_tasks,
)

if TYPE_CHECKING:
    from pathlib import Path

FULL = os.environ.get("CHAOS_PROFILE", "small") == "full"
# The seed of each test's `rng`, by node id (for failure messages).
SEEDS: dict[str, int] = {}


def size(small: int, full: int) -> int:
    """The size of a run in the current profile."""
    return full if FULL else small


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """The seeded generator of a test's fault schedule; the seed is printed for replay."""
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\n{request.node.nodeid}: CHAOS_SEED={seed}")
    SEEDS[request.node.nodeid] = seed
    return random.Random(seed)


@pytest.fixture
def ledger(tasks_dir: Path, broker_env: str) -> Ledger:  # noqa: F811
    """The chaos `tasks.py` written into the test directory, and its ledger."""
    write_tasks(tasks_dir, SOURCE)
    return Ledger(tasks_dir)
