"""`celeriac.worker.pidfile`: one holder per pid file; stale files are replaced."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from celeriac.worker.pidfile import PidFile, PidFileError

if TYPE_CHECKING:
    from pathlib import Path


def test_acquire_writes_our_pid_and_release_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "w.pid"
    pidfile = PidFile(str(path))
    pidfile.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    pidfile.release()
    assert not path.exists()


def test_a_locked_pid_file_is_refused_naming_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "w.pid"
    holder = PidFile(str(path))
    holder.acquire()
    try:
        # flock locks belong to an open file: a second open, even here, is refused.
        with pytest.raises(
            PidFileError, match=rf"locked by a running worker \(pid {os.getpid()}\)"
        ):
            PidFile(str(path)).acquire()
    finally:
        holder.release()


def test_a_stale_pid_file_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    path = tmp_path / "w.pid"
    path.write_text(f"{gone.pid}\n")
    pidfile = PidFile(str(path))
    pidfile.acquire()
    try:
        assert path.read_text() == f"{os.getpid()}\n"
        assert f"(pid {gone.pid} is gone)" in caplog.text
    finally:
        pidfile.release()


def test_an_unlocked_pid_file_naming_a_live_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pid"
    path.write_text(f"{os.getppid()}\n")
    with pytest.raises(PidFileError, match=f"names pid {os.getppid()}, which is running"):
        PidFile(str(path)).acquire()


def test_a_pid_file_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PidFileError, match="cannot open the pid file"):
        PidFile(str(tmp_path / "missing" / "w.pid")).acquire()
