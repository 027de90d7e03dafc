"""A canonical two-app Django project (tests/django_project) with a real worker.

The project is Celery's documented layout with only the import changed: `proj/celery.py`
reads `CELERY_*` settings and calls `autodiscover_tasks()`; `orders` and `billing` each
have a `tasks.py` that imports its models. The web side (`drive.py`) and the worker are
separate processes, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import require_postgres, unique, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.integration.conftest import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT = Path(__file__).resolve().parents[1] / "django_project"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database for one test (on PostgreSQL, made and dropped by the test)."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'project.sqlite3'}"
        return
    import psycopg

    admin_url = require_postgres()
    name = unique("celeriac").replace("-", "_")
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Project:
    """The test project with its environment, and the processes it starts."""

    def __init__(self, database_url: str, directory: Path) -> None:
        self.directory = directory
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "proj.settings",
            "TEST_DATABASE_URL": database_url,
            "TEST_BROKER_URL": f"sqlite:///{directory / 'broker.db'}",
            "TEST_QUEUE": unique("q"),
        }
        self.workers: list[subprocess.Popen[bytes]] = []

    def run(self, *args: str, **env: str) -> str:
        done = subprocess.run(
            [sys.executable, *args],
            cwd=PROJECT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def drive(self, command: str) -> dict[str, Any]:
        lines = self.run("drive.py", command).strip().splitlines()
        report: dict[str, Any] = json.loads(lines[-1])
        return report

    def worker(self, *args: str, **env: str) -> WorkerProcess:
        from tests.integration.conftest import WorkerProcess

        log = self.directory / f"worker-{len(self.workers)}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "celeriac", "-A", "proj", "worker", "-l", "info", *args],
                cwd=PROJECT,
                env={**self.env, **env},
                stdout=handle,
                stderr=handle,
            )
        self.workers.append(process)
        worker = WorkerProcess(process, self.directory, log)
        wait_for(
            lambda: "ready" in worker.output() or process.poll() is not None,
            timeout=60,
            what="worker start",
        )
        assert process.poll() is None, worker.output()
        return worker


@pytest.fixture
def project(database_url: str, tmp_path: Path) -> Iterator[Project]:
    project = Project(database_url, tmp_path)
    project.run("manage.py", "migrate", "--no-input")
    started: list[WorkerProcess] = []
    original = project.worker

    def worker(*args: str, **env: str) -> WorkerProcess:
        started.append(original(*args, **env))
        return started[-1]

    project.worker = worker  # type: ignore[method-assign]
    yield project
    for running in started:
        running.stop()


def test_delay_on_commit_sends_after_commit_only(project: Project) -> None:
    report = project.drive("produce")
    assert report["inside_rolled_back"] == 0
    assert report["after_rollback"] == 0
    assert report["inside_committed"] == 0
    assert report["after_commit"] == 1


@pytest.mark.parametrize("discovery", ["no-argument", "lambda"])
def test_worker_discovers_the_apps_tasks_and_writes_through_the_orm(
    project: Project, discovery: str
) -> None:
    project.drive("produce")
    worker = project.worker(
        "-P", "prefork", "-c", "2", TEST_DISCOVERY=discovery, TEST_CONNECT_AT_START="1"
    )
    banner = worker.output()
    assert "orders.tasks.ship" in banner
    assert "billing.tasks.invoice" in banner

    report = project.drive("check")
    assert report["shipped_by"] in worker.children()
    assert report["invoice"] > 0
    assert report["rolled_back_orders"] == 0
    row = report["result_row"]
    assert row["status"] == "SUCCESS"
    assert json.loads(row["result"]) == "committed"
    assert row["worker"].startswith("celeriac@")
    assert report["result_get"] == "committed"
    # Connections are closed before each task (and none came from the supervisor), even
    # though the previous task left one open and the project connects at start-up.
    assert [state["open_at_start"] for state in report["connection_states"]] == [False, False]
    # The project connected while the worker started; the children did not inherit it.
    assert [s["child_started_with_connection"] for s in report["connection_states"]] == [
        False,
        False,
    ]
    assert "AppRegistryNotReady" not in worker.output()


def test_results_are_stored_in_a_project_without_use_tz(project: Project) -> None:
    project.env["TEST_USE_TZ"] = "0"
    project.drive("produce")
    project.worker("-P", "threads", "-c", "2")
    report = project.drive("check")
    assert report["result_row"]["status"] == "SUCCESS"
    assert report["result_get"] == "committed"


def test_the_app_uses_djangos_time_zone(project: Project) -> None:
    report = project.drive("check-timezone")
    assert report["timezone"] == "America/New_York"
    # A naive ETA is read in the project's zone (09:00 New York is 14:00 UTC in winter).
    eta = datetime.fromisoformat(report["naive_eta"])
    assert eta == datetime(2030, 1, 15, 14, 0, tzinfo=timezone.utc)
