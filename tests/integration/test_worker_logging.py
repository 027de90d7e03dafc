"""A real worker's logging: task loggers print the task's name and id, `--logfile`,
`worker_hijack_root_logger=False` keeps a project's own root handlers, a `setup_logging`
receiver takes over, and `-l` takes any case (a bad level is a usage error, exit 64).

Each test writes its own `tasks.py` on an SQLite broker in its own directory and stops
its worker by pid."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from celeriac.cli import EX_CONFIG, EX_USAGE
from tests.helpers import wait_for
from tests.integration.conftest import import_tasks, write_tasks

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import RunWorker

pytestmark = pytest.mark.integration

TASKS = """
from pathlib import Path

from celeriac import Celeriac
from celeriac.utils.log import get_task_logger

HERE = Path(__file__).resolve().parent
app = Celeriac("tasks", broker=f"sqlite:///{{HERE / 'queue.db'}}", {settings})
logger = get_task_logger(__name__)
{extra}

@app.task
def hello(name):
    logger.warning("hello %s", name)
    return name
"""

ROOT_CONFIGURED = """
import logging.config

logging.config.dictConfig({
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"mine": {"format": "MINE %(levelname)s %(name)s %(message)s"}},
    "handlers": {
        "file": {"class": "logging.FileHandler", "filename": str(HERE / "mine.log"),
                 "formatter": "mine"},
    },
    "root": {"handlers": ["file"], "level": "INFO"},
})
"""

SETUP_LOGGING = """
import logging

from celeriac.signals import after_setup_logger, setup_logging


@setup_logging.connect
def configure(loglevel, logfile, **kwargs):
    handler = logging.FileHandler(HERE / "mine.log")
    handler.setFormatter(logging.Formatter("RECEIVER %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(loglevel)


@after_setup_logger.connect
def not_sent(**kwargs):
    (HERE / "after.log").write_text("sent")
"""


def project(directory: Path, *, settings: str = "", extra: str = "") -> object:
    write_tasks(directory, TASKS.format(settings=settings, extra=extra))
    return import_tasks(directory)


def wait_ready(log: Path) -> None:
    """The worker logs its "ready" line to `log` (not stderr, where `run_worker` looks)."""
    wait_for(
        lambda: log.exists() and " ready" in log.read_text(), timeout=30, what="ready in the log"
    )


def test_task_log_lines_name_the_task_and_its_id_in_the_logfile(
    tasks_dir: Path, run_worker: RunWorker
) -> None:
    tasks = project(tasks_dir)
    logfile = tasks_dir / "worker.log"
    run_worker("-P", "solo", "-l", "INFO", "--logfile", str(logfile), wait=False)
    wait_ready(logfile)
    result = tasks.hello.delay("world")  # type: ignore[attr-defined]
    assert result.get(timeout=20) == "world"
    wait_for(lambda: "hello world" in logfile.read_text(), timeout=10, what="task log line")
    text = logfile.read_text()
    assert re.search(rf"tasks\.hello\[{result.id}\]: hello world", text), text
    assert "celeriac worker" in text
    assert "ready" in text


def test_without_hijacking_the_projects_root_handlers_keep_the_workers_records(
    tasks_dir: Path, run_worker: RunWorker
) -> None:
    tasks = project(tasks_dir, settings="worker_hijack_root_logger=False", extra=ROOT_CONFIGURED)
    worker = run_worker("-P", "solo", "-l", "info", wait=False)
    wait_ready(tasks_dir / "mine.log")
    assert tasks.hello.delay("x").get(timeout=20) == "x"  # type: ignore[attr-defined]
    mine = (tasks_dir / "mine.log").read_text()
    assert re.search(r"MINE INFO celeriac\.worker celeriac worker \S+ ready", mine), mine
    # The root logger kept its handlers only: the worker's own records are not on stderr.
    assert "ready" not in worker.output().split("[tasks]")[-1]


def test_a_setup_logging_receiver_replaces_the_workers_logging(
    tasks_dir: Path, run_worker: RunWorker
) -> None:
    tasks = project(tasks_dir, extra=SETUP_LOGGING)
    run_worker("-P", "solo", "-l", "info", wait=False)
    wait_ready(tasks_dir / "mine.log")
    assert tasks.hello.delay("y").get(timeout=20) == "y"  # type: ignore[attr-defined]
    mine = (tasks_dir / "mine.log").read_text()
    assert "RECEIVER celeriac.worker celeriac worker" in mine
    # Celery compat: the task logger is not set up either; its records reach the root.
    assert "RECEIVER tasks hello y" in mine
    assert not (tasks_dir / "after.log").exists()


def test_a_bad_log_level_is_a_usage_error(tasks_dir: Path, run_worker: RunWorker) -> None:
    project(tasks_dir)
    worker = run_worker("-P", "solo", "-l", "verbose", wait=False)
    assert worker.wait(timeout=60) == EX_USAGE
    output = worker.output()
    assert "Usage: celeriac worker" in output
    assert "unknown log level 'verbose'" in output


def test_a_logfile_that_cannot_be_opened_is_a_configuration_error(
    tasks_dir: Path, run_worker: RunWorker
) -> None:
    project(tasks_dir)
    missing = tasks_dir / "no-such-dir" / "worker.log"
    worker = run_worker("-P", "solo", "--logfile", str(missing), wait=False)
    assert worker.wait(timeout=60) == EX_CONFIG
    assert "Error: cannot open the log file: " in worker.output()
    assert str(missing) in worker.output()
