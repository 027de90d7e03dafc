"""Hard time limits of a prefork worker when the wall clock is stepped under it.

The worker's processes read a wall clock that jumps by an hour, forward or back, once
the test says so: `time.time` is replaced at interpreter start (a `sitecustomize`
module on the worker's path), so the supervisor and its forked children see the step as
they would an NTP step of the system clock. A forward step must not kill a task within
its limit; a backward step must not disable the limit.

Checks docs/reliability.md, "Wall clock stepped".
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest

from celeriac.exceptions import TimeLimitExceeded
from tests.helpers import wait_for
from tests.integration.conftest import import_tasks, write_tasks
from tests.integration.worker_tasks import SOURCE, events

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import RunWorker

pytestmark = pytest.mark.integration

# Steps every process's `time.time` by CLOCK_STEP_SECONDS while the file CLOCK_STEP_FILE
# exists.
SITECUSTOMIZE = """
import os
import time

_real = time.time
_file = os.environ["CLOCK_STEP_FILE"]
_step = float(os.environ["CLOCK_STEP_SECONDS"])


def _stepped():
    return _real() + (_step if os.path.exists(_file) else 0.0)


time.time = _stepped
"""

HOUR = 3600.0


@pytest.fixture
def stepped(tasks_dir: Path, tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        "CLOCK_STEP_FILE": str(tmp_path / "stepped"),
    }


def started(directory: Path, key: str) -> list[dict[str, Any]]:
    return [e for e in events(directory) if e["event"] == "start" and e.get("key") == key]


@pytest.mark.parametrize("broker_env", ["sqlite"], indirect=True)
def test_a_forward_step_does_not_kill_a_task_within_its_limit(
    broker_env: str, tasks_dir: Path, run_worker: RunWorker, stepped: dict[str, str]
) -> None:
    write_tasks(tasks_dir, SOURCE)
    tasks = import_tasks(tasks_dir)
    run_worker("-c", "1", env={**stepped, "CLOCK_STEP_SECONDS": str(HOUR)})
    result = tasks.sleeper.apply_async((2, "long"), time_limit=60)
    wait_for(lambda: started(tasks_dir, "long"), timeout=20, what="the task to start")
    open(stepped["CLOCK_STEP_FILE"], "w").close()  # the wall clock jumps an hour ahead
    assert result.get(timeout=30) == "long"
    tasks.app.close()


@pytest.mark.parametrize("broker_env", ["sqlite"], indirect=True)
def test_a_backward_step_does_not_disable_the_hard_limit(
    broker_env: str, tasks_dir: Path, run_worker: RunWorker, stepped: dict[str, str]
) -> None:
    write_tasks(tasks_dir, SOURCE)
    tasks = import_tasks(tasks_dir)
    run_worker("-c", "1", env={**stepped, "CLOCK_STEP_SECONDS": str(-HOUR)})
    result = tasks.hard.delay()  # time_limit=1, sleeps 10 s
    wait_for(lambda: started(tasks_dir, "hard"), timeout=20, what="the task to start")
    open(stepped["CLOCK_STEP_FILE"], "w").close()  # the wall clock jumps an hour back
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=8)
    assert not [e for e in events(tasks_dir) if e["event"] == "end"]
    tasks.app.close()
