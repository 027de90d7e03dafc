"""The embedded default: where `celeriac.db` lives when no broker URL is set.

The file sits beside the module that created the app (`tasks.py` → `tasks.py`'s
directory, `proj/celery.py` → `proj/`), not in the current directory: a producer and a
worker that import the same app module share it wherever each was started from. An app
made outside any file (an interactive session) uses the current directory. The path is
absolute from the start, and the worker's banner shows it.

A producer that is about to create the file warns once: no worker has opened it yet,
so a worker started elsewhere (another directory, machine or container) would be
waiting on a file of its own. Set `broker_url` to share a queue across those.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

__all__ = ["DEFAULT_FILENAME", "app_directory", "default_url", "warn_if_unshared"]

logger = logging.getLogger("celeriac.app")

# The embedded default's file name.
DEFAULT_FILENAME = "celeriac.db"

_warned: set[str] = set()


def app_directory(depth: int = 1) -> Path:
    """The directory of the first module up the call stack that is not celeriac's own
    (the one creating the app), else the current directory."""
    frame = sys._getframe(depth)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module != "celeriac" and not module.startswith("celeriac."):
            filename = frame.f_globals.get("__file__")
            if isinstance(filename, str) and os.path.isfile(filename):
                return Path(filename).resolve().parent
            break
        frame = frame.f_back  # type: ignore[assignment]
    return Path.cwd()


def default_url(directory: Path) -> str:
    """The SQLite URL of the default file in `directory` (absolute: four slashes)."""
    return f"sqlite:///{directory / DEFAULT_FILENAME}"


def warn_if_unshared(directory: Path) -> None:
    """Warn (once per file) when a producer is about to create the default file."""
    path = directory / DEFAULT_FILENAME
    if path.exists() or str(path) in _warned:
        return
    _warned.add(str(path))
    logger.warning(
        "no broker_url is set: tasks are queued in the SQLite file %s, which no worker has "
        "opened yet; a worker shares it only if it runs on this machine with the same app "
        "module (set broker_url, e.g. redis://host:6379/0, to share a queue across "
        "directories, machines or containers)",
        path,
    )
