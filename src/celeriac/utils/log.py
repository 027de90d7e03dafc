"""Loggers for task modules: `get_task_logger(__name__)`, as `celery.utils.log` has.

```python
from celeriac.utils.log import get_task_logger

logger = get_task_logger(__name__)

@app.task
def add(x, y):
    logger.info("adding %s + %s", x, y)   # [...] tasks.add[<id>]: adding 2 + 2
```

A task logger is a child of the `celeriac.task` logger (Celery's `celery.task`), which
the worker gives a handler that prints the task's name and id; every record it makes
carries `task_id` and `task_name` (`"???"` outside a task, as in Celery), so a format of
your own can use `%(task_id)s` and `%(task_name)s` too.
"""

from __future__ import annotations

import logging

from celeriac.app.context import current_request, current_task

__all__ = ["TaskFormatter", "get_logger", "get_task_logger", "task_logger"]

# The parent of every task logger (Celery's `celery.task`).
TASK_LOGGER_NAME = "celeriac.task"

# Celery's default formats of the worker's own records and of task records.
LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
TASK_LOG_FORMAT = (
    "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"
)

# What `task_id` and `task_name` read outside a task (Celery's placeholder).
UNKNOWN = "???"


def add_task_fields(record: logging.LogRecord) -> logging.LogRecord:
    """Set `record.task_id`/`record.task_name` from the running task, unless set."""
    if not hasattr(record, "task_id"):
        request = current_request()
        task = current_task()
        record.task_id = (request.id if request is not None else None) or UNKNOWN
        record.task_name = (task.name if task is not None else None) or UNKNOWN
    return record


class _TaskFields(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        add_task_fields(record)
        return True


class TaskFormatter(logging.Formatter):
    """A formatter whose format may use `%(task_id)s` and `%(task_name)s`."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(add_task_fields(record))


_FIELDS = _TaskFields()


def get_logger(name: str) -> logging.Logger:
    """The logger `name` (Celery's `get_logger`)."""
    return logging.getLogger(name)


def get_task_logger(name: str) -> logging.Logger:
    """A logger for a task module, under `celeriac.task`, whose records carry the running
    task's `task_id` and `task_name`.

    Raises:
        RuntimeError: `name` is the reserved task logger's own name.
    """
    if name in (TASK_LOGGER_NAME, "celery.task"):
        raise RuntimeError(f"logger name {name!r} is reserved for the task logger")
    logger = logging.getLogger(name)
    # Celery compat: the module's logger hangs under the task logger, so the worker's
    # task handler (and `after_setup_task_logger` receivers) see its records.
    logger.parent = task_logger
    if _FIELDS not in logger.filters:
        logger.addFilter(_FIELDS)
    return logger


#: The parent of every task logger.
task_logger = logging.getLogger(TASK_LOGGER_NAME)
task_logger.addFilter(_FIELDS)
