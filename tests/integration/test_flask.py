"""Flask's documented Celery set-up, with only the import changed, on a real worker.

`celery_init_app` below is the one in Flask's "Background Tasks with Celery" guide:
`Celery(app.name, task_cls=FlaskTask)`, whose `__call__` runs the task inside the Flask
application context, then `config_from_object(app.config["CELERY"])` and
`set_default()`; tasks are `@shared_task`s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.integration.conftest import import_tasks, write_tasks

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import RunWorker

pytestmark = pytest.mark.integration

TASKS = """
import os

from flask import Flask, current_app

from celeriac import Celery, Task, shared_task


def celery_init_app(app):
    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def create_app():
    app = Flask("shop")
    app.config.from_mapping(
        CELERY=dict(broker_url=os.environ["TEST_BROKER_URL"], task_ignore_result=False),
        GREETING="hello from the shop",
    )
    app.config.from_prefixed_env()
    celery_init_app(app)
    return app


flask_app = create_app()
celery_app = flask_app.extensions["celery"]


@shared_task(ignore_result=False)
def greeting():
    return current_app.config["GREETING"]
"""


@pytest.fixture
def flask_tasks(tasks_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEST_BROKER_URL", f"sqlite:///{tasks_dir / 'broker.db'}")
    write_tasks(tasks_dir, TASKS)
    return tasks_dir


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_tasks_run_inside_the_flask_app_context(
    flask_tasks: Path, run_worker: RunWorker, pool: str
) -> None:
    run_worker("-P", pool, "-c", "1")
    tasks = import_tasks(flask_tasks)
    assert tasks.greeting.delay().get(timeout=30) == "hello from the shop"


def test_eager_runs_use_the_app_context_too(flask_tasks: Path) -> None:
    tasks = import_tasks(flask_tasks)
    assert tasks.greeting.apply().get() == "hello from the shop"
