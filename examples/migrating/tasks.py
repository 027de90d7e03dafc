"""A Celery project's task module after `celery` → `celeriac` in its imports."""

from __future__ import annotations

import warnings
from typing import Any

from celeriac import Celery, current_task
from celeriac.exceptions import CDeprecationWarning
from celeriac.utils.log import get_task_logger

app = Celery("tasks")  # no broker URL: celeriac.db beside this file
with warnings.catch_warnings():
    # The settings module uses Celery 3 names on purpose: one warning each, naming the
    # new name. A real project renames them.
    warnings.simplefilter("ignore", CDeprecationWarning)
    app.config_from_object("celeryconfig")

logger = get_task_logger(__name__)


@app.task
def thumbnail(path: str) -> str:
    logger.info("thumbnailing %s", path)  # printed as tasks.thumbnail[<id>]: ...
    return f"thumb-of-{path}"


@app.task(bind=True)
def process(self: Any, path: str) -> Any:
    # Hand the rest of the work to another task: same id, same place in any chain.
    return self.replace(thumbnail.s(path))


class Shout(app.Task):  # type: ignore[misc,name-defined]
    """A class-based task, as in Celery."""

    name = "tasks.shout"

    def run(self, text: str) -> str:
        return f"{text.upper()} (from {current_task.name})"


shout = app.register_task(Shout())
