"""The embedded default with no broker URL: the worker's banner shows the absolute path
of `celeriac.db`, beside the app's module, and a producer started from another directory
shares that file with the worker."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.integration.conftest import import_tasks, write_tasks

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import RunWorker

pytestmark = pytest.mark.integration

TASKS = """
from celeriac import Celeriac

app = Celeriac("tasks")


@app.task
def add(x, y):
    return x + y
"""


def test_producer_and_worker_in_different_directories_share_the_default_file(
    tasks_dir: Path, tmp_path: Path, run_worker: RunWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("CELERIAC_BROKER_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(variable, raising=False)
    write_tasks(tasks_dir, TASKS)
    worker = run_worker("-P", "solo")  # runs in tasks_dir
    expected = tasks_dir.resolve() / "celeriac.db"
    assert f"broker:       sqlite:///{expected}  (the default: no broker_url set)" in (
        worker.output()
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tasks = import_tasks(tasks_dir)
    assert tasks.add.delay(2, 3).get(timeout=20) == 5
    assert not (elsewhere / "celeriac.db").exists()
    tasks.app.close()
