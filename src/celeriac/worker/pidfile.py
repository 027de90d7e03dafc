"""`--pidfile`: one worker per pid file, held with an `fcntl` lock for the worker's life.

A second worker given the same pid file finds it locked and refuses to start, naming the
pid that holds it. A pid file left behind by a worker that is gone (killed with SIGKILL,
a crash, a power cut) is not locked by anyone: it is detected, logged and replaced. The
lock goes with the process, so it never outlives the worker the way the file can.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from typing import final

from celeriac.exceptions import CeleriacError

__all__ = ["PidFile", "PidFileError"]

logger = logging.getLogger("celeriac.worker")


class PidFileError(CeleriacError):
    """The pid file is held by a running worker, or cannot be written."""


@final
class PidFile:
    """The pid file at `path`; `acquire()` locks it and writes this process's pid."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Lock the file and write our pid into it.

        Raises:
            PidFileError: another process holds it, or it cannot be opened or written.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise PidFileError(f"cannot open the pid file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise PidFileError(f"cannot lock the pid file {self.path}: {exc}") from exc
            holder = _read_pid(self.path)
            raise PidFileError(
                f"pid file {self.path} is locked by a running worker (pid {holder or '?'}): "
                "stop that worker first, or give this one another --pidfile"
            ) from None
        old = _read_pid(self.path)
        if old is not None and old != os.getpid():
            if _is_running(old):
                # Unlocked, but its pid lives: a worker that does not lock (Celery's).
                os.close(fd)
                raise PidFileError(
                    f"pid file {self.path} names pid {old}, which is running: stop it "
                    "first, or remove the file if that process is not a worker"
                )
            logger.warning("Replacing the stale pid file %s (pid %d is gone)", self.path, old)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            raise PidFileError(f"cannot write the pid file {self.path}: {exc.strerror}") from exc
        self._fd = fd

    def release(self) -> None:
        """Remove the file (if it still names us) and drop the lock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if _read_pid(self.path) == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(fd)


def _read_pid(path: str) -> int | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
