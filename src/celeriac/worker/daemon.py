"""Running the worker as a daemon: `-D` (detach), `--uid`/`--gid`, `--umask`, and the
warning a worker run as root gives.

`detach()` forks twice (a new session, no controlling terminal) and returns in the
daemon. The command's original process stays until the daemon is ready or has failed at
start: it relays what the daemon prints meanwhile (the banner, an error) and exits with
the daemon's start-up code, so a deploy script or a `Type=forking` unit sees a worker
that could not start. Once ready, the daemon's stdout and stderr go to the log file
(`-f`, expanded for the supervisor) or to `/dev/null`.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import sys
from typing import final

from celeriac.exceptions import ImproperlyConfigured

__all__ = ["Detached", "detach", "drop_privileges", "parse_umask", "root_warning"]

# What the daemon writes on the status pipe: ready, or the exit code it failed with.
READY = b"\x00ready\n"
EXIT = b"\x00exit "


@final
class Detached:
    """The daemon's end of the status pipe."""

    def __init__(self, status_fd: int) -> None:
        self._fd: int | None = status_fd

    def ready(self, output: str | None) -> None:
        """Tell the waiting command we are up; stdout/stderr go to `output` (a log file,
        else /dev/null) from now."""
        if self._fd is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        target = os.open(output or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(target, 1)
        os.dup2(target, 2)
        os.close(target)
        self._send(READY)

    def failed(self, code: int) -> None:
        """Tell the waiting command we exit with `code` before being ready."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            sys.stdout.flush()
            sys.stderr.flush()
        self._send(EXIT + f"{code}\n".encode())

    def _send(self, data: bytes) -> None:
        fd, self._fd = self._fd, None
        assert fd is not None
        with contextlib.suppress(OSError):
            os.write(fd, data)
        os.close(fd)


def detach() -> Detached:
    """Fork into the background; return (in the daemon) its status handle.

    The calling process does not return: it relays the daemon's start-up output and exits
    with 0 once the daemon is ready, or with the daemon's exit code.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    first = os.fork()
    if first > 0:
        os.close(write_fd)
        os.waitpid(first, 0)
        sys.exit(_relay(read_fd))
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.close(devnull)
    # Until ready, what the daemon prints reaches the waiting command.
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    return Detached(write_fd)


def _relay(read_fd: int) -> int:
    """Copy the daemon's output to our stderr until it says ready (0) or failed."""
    pending = b""
    while True:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            _write(pending)
            _write(b"Error: the detached worker exited at start\n")
            return 1
        pending += chunk
        marker = pending.find(b"\x00")
        if marker < 0:
            _write(pending)
            pending = b""
            continue
        _write(pending[:marker])
        rest = pending[marker:]
        if rest.startswith(READY):
            return 0
        if rest.startswith(EXIT) and rest.endswith(b"\n"):
            text = rest[len(EXIT) :].strip()
            return int(text) if text.isdigit() else 1
        pending = rest


def _write(data: bytes) -> None:
    if data:
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()


def parse_umask(value: str) -> int:
    """`--umask`: octal with a leading 0 (`022`, `0o22`), else decimal (as Celery).

    Raises:
        ImproperlyConfigured: not a number in 0..0o777.
    """
    text = value.strip().lower()
    try:
        mask = int(text[2:] if text.startswith("0o") else text, 8 if text.startswith("0") else 10)
    except ValueError:
        raise ImproperlyConfigured(f"--umask {value!r} is not a number (e.g. 022)") from None
    if not 0 <= mask <= 0o777:
        raise ImproperlyConfigured(f"--umask {value!r} is out of range (000 to 0777)")
    return mask


def _uid(value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise ImproperlyConfigured(f"--uid {value!r}: no such user") from None


def _gid(value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise ImproperlyConfigured(f"--gid {value!r}: no such group") from None


def drop_privileges(*, uid: str | None, gid: str | None) -> None:
    """Become `uid` (its primary group unless `gid`) and/or `gid`, for good.

    Raises:
        ImproperlyConfigured: an unknown user or group, or not allowed to switch.
    """
    if uid is None and gid is None:
        return
    user = _uid(uid) if uid is not None else None
    group = _gid(gid) if gid is not None else None
    if user is not None and group is None:
        try:
            group = pwd.getpwuid(user).pw_gid
        except KeyError:
            group = user
    try:
        if group is not None:
            os.setgid(group)
        if user is not None:
            try:
                name = pwd.getpwuid(user).pw_name
            except KeyError:
                os.setgroups([])
            else:
                os.initgroups(name, group if group is not None else os.getgid())
            os.setuid(user)
    except PermissionError as exc:
        raise ImproperlyConfigured(
            f"cannot switch to --uid {uid} --gid {gid}: {exc.strerror} (only root can)"
        ) from exc
    if user not in (None, 0):
        with contextlib.suppress(PermissionError):
            os.setuid(0)
            raise ImproperlyConfigured("still able to become root after --uid: refusing to run")


def root_warning() -> str | None:
    """Celery's warning for a worker run as root, or None."""
    if os.getuid() != 0 and os.geteuid() != 0:
        return None
    return (
        "You're running the worker with superuser privileges: this is absolutely not "
        "recommended! Please specify a different user using the --uid option. "
        f"(uid={os.getuid()} euid={os.geteuid()} gid={os.getgid()} egid={os.getegid()})"
    )
