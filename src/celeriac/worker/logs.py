"""The worker's logging set-up, as Celery's: signals first, the root logger only when
it is ours to take.

1. `setup_logging` is sent; if anything is connected to it, the worker configures no
   logging at all: the receivers do (Celery's way to keep a project's own `LOGGING`).
2. Otherwise, with `worker_hijack_root_logger` on (the default), the root logger's
   handlers are removed; with it off, a root logger that already has handlers (a
   project's `logging.config.dictConfig`, Django's `LOGGING`) keeps them. A root logger
   without handlers gets one writing to stderr (or `--logfile`). Its level is `-l`.
   Then `after_setup_logger` is sent with the root logger.
3. The task logger (`celeriac.task`, the parent of `get_task_logger` loggers) gets a
   handler printing the task's name and id, unless it has one; it does not propagate
   (Celery compat). Then `after_setup_task_logger` is sent with it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from celeriac import signals
from celeriac.utils.log import TaskFormatter, task_logger

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac

__all__ = [
    "LEVELS",
    "LOG_FORMAT",
    "TASK_LOG_FORMAT",
    "configure_logging",
    "parse_level",
    "reopen_logfile",
]

# The worker's formats: Celery's, with the process id.
LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s %(process)d] %(message)s"
TASK_LOG_FORMAT = (
    "[%(asctime)s: %(levelname)s/%(processName)s %(process)d] "
    "%(task_name)s[%(task_id)s]: %(message)s"
)

# The level names `-l` takes, in any case (Celery's, with its aliases).
LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
    "FATAL": logging.CRITICAL,
}


def parse_level(name: str) -> int:
    """The level `name` names (`info`, `INFO`, `20`).

    Raises:
        ValueError: not a level; the message lists the names.
    """
    level = LEVELS.get(name.strip().upper())
    if level is None and name.strip().isdigit():
        level = int(name)
    if level is None:
        raise ValueError(f"unknown log level {name!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def _handler(logfile: str | None, formatter: logging.Formatter) -> logging.Handler:
    handler: logging.Handler
    if logfile:
        handler = logging.FileHandler(logfile, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    return handler


def configure_logging(app: Celeriac, *, loglevel: str, logfile: str | None = None) -> None:
    """Set up the worker's logging (see the module docstring).

    Raises:
        ValueError: `loglevel` is not a level.
        OSError: `logfile` cannot be opened.
    """
    level = parse_level(loglevel)
    details = {"loglevel": level, "logfile": logfile, "format": LOG_FORMAT, "colorize": False}
    if signals.setup_logging.send(sender=None, **details):
        return
    root = logging.getLogger()
    if app.conf.worker_hijack_root_logger:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in list(task_logger.handlers):
            task_logger.removeHandler(handler)
    if not root.handlers:
        root.addHandler(_handler(logfile, logging.Formatter(LOG_FORMAT)))
    root.setLevel(level)
    signals.after_setup_logger.send(sender=None, logger=root, **details)
    if not task_logger.handlers:
        task_logger.addHandler(_handler(logfile, TaskFormatter(TASK_LOG_FORMAT)))
    task_logger.setLevel(level)
    task_logger.propagate = False
    signals.after_setup_task_logger.send(
        sender=None, logger=task_logger, **{**details, "format": TASK_LOG_FORMAT}
    )


def reopen_logfile(old: str, new: str) -> None:
    """Point the handlers writing to `old` at `new` (a prefork child's own `%i` file).

    Raises:
        OSError: `new` cannot be opened.
    """
    old_path, new_path = os.path.abspath(old), os.path.abspath(new)
    for logger in (logging.getLogger(), task_logger):
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler) and handler.baseFilename == old_path:
                handler.acquire()
                try:
                    if handler.stream is not None:
                        handler.stream.close()
                    handler.baseFilename = new_path
                    handler.stream = handler._open()
                finally:
                    handler.release()
