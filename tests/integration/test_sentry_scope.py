"""The Sentry example: each task's events carry its own tags, through the signals, in a
real prefork worker (events recorded by a transport that writes them to a file)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.integration.conftest import RunWorker, import_tasks, write_tasks
from tests.integration.worker_tasks import APP

pytestmark = [pytest.mark.integration, pytest.mark.redis]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "observability" / "sentry_scope.py"

SOURCE = (
    """
import json
import os
from pathlib import Path

import sentry_sdk
from sentry_sdk.transport import Transport

import sentry_scope
from celeriac import Celeriac
from celeriac.signals import worker_process_init

HERE = Path(__file__).resolve().parent
"""
    + APP
    + """

class FileTransport(Transport):
    def capture_envelope(self, envelope):
        for item in envelope.items:
            if item.type == "event":
                with open(HERE / "events.jsonl", "a") as out:
                    out.write(json.dumps(item.payload.json) + "\\n")


@worker_process_init.connect(weak=False)
def start_sentry(**kwargs):
    sentry_sdk.init(
        dsn="http://public@127.0.0.1:9/1",
        transport=FileTransport,
        default_integrations=False,
        auto_enabling_integrations=False,
    )


sentry_scope.install()


@app.task
def charge(order):
    sentry_sdk.set_tag("order", order)
    raise ValueError(f"card declined for {order}")


@app.task
def ship():
    raise RuntimeError("no courier")
"""
)


@pytest.fixture
def tasks(tasks_dir: Path, broker_env: str) -> Any:
    shutil.copy(EXAMPLE, tasks_dir / "sentry_scope.py")
    write_tasks(tasks_dir, SOURCE)
    module = import_tasks(tasks_dir)
    yield module
    module.app.close()


def events(directory: Path) -> list[dict[str, Any]]:
    path = directory / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_each_task_reports_its_failure_with_its_own_scope(
    tasks: Any, tasks_dir: Path, run_worker: RunWorker
) -> None:
    run_worker("-c", "1")  # one child runs both, one after the other
    charged = tasks.charge.delay("A-17")
    with pytest.raises(ValueError, match="declined"):
        charged.get(timeout=20)
    shipped = tasks.ship.delay()
    with pytest.raises(RuntimeError, match="courier"):
        shipped.get(timeout=20)
    charge, ship = wait_for(lambda: events(tasks_dir) if len(events(tasks_dir)) == 2 else [])
    assert charge["tags"]["celery_task_id"] == charged.id
    assert charge["tags"]["celery_task_name"] == "tasks.charge"
    assert charge["tags"]["order"] == "A-17"
    assert charge["exception"]["values"][-1]["type"] == "ValueError"
    # The second task's scope starts clean: no tag of the first leaks into it.
    assert ship["tags"]["celery_task_id"] == shipped.id
    assert "order" not in ship["tags"]
    assert ship["exception"]["values"][-1]["type"] == "RuntimeError"
