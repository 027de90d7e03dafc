"""`celeriac -A tasks dashboard`: the loopback rule and auth, on the real command.

Checks docs/dashboard.md, "Safe by default": beyond loopback the dashboard refuses to
start without `--auth` (exit 78, naming the flags); a bad `--auth` is refused; with
`--auth token:SECRET` a request needs the token. Only loopback is ever bound: the
refusal happens before anything listens. Every process is stopped by pid.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import pytest

from celeriac.cli import EX_CONFIG
from tests.helpers import wait_for
from tests.integration.conftest import write_tasks

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

SOURCE = """
from pathlib import Path

from celeriac import Celeriac

app = Celeriac("tasks", broker=f"sqlite:///{Path(__file__).parent / 'broker.db'}")
"""


def _dashboard(
    directory: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "celeriac", "-A", "tasks", "dashboard", *args],
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate(timeout=10)
    return process.returncode, err


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_beyond_loopback_without_auth_is_refused(tasks_dir: Path) -> None:
    write_tasks(tasks_dir, SOURCE)
    code, err = _finish(_dashboard(tasks_dir, "--host", "0.0.0.0"))
    assert code == EX_CONFIG
    assert "beyond loopback" in err
    assert "--auth token:SECRET or --auth basic:USER:PASSWORD" in err


def test_a_bad_auth_value_is_refused(tasks_dir: Path) -> None:
    write_tasks(tasks_dir, SOURCE)
    code, err = _finish(_dashboard(tasks_dir, "--auth", "password"))
    assert code == EX_CONFIG
    assert "token:SECRET or basic:USER:PASSWORD" in err


def test_with_a_token_requests_need_it(tasks_dir: Path) -> None:
    write_tasks(tasks_dir, SOURCE)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = _dashboard(
        tasks_dir, "--port", str(port), env={"CELERIAC_DASHBOARD_AUTH": "token:s3cret"}
    )
    try:
        url = f"http://127.0.0.1:{port}/queues"
        wait_for(
            lambda: process.poll() is not None or _answers(url), timeout=30, what="the dashboard"
        )
        assert process.poll() is None
        assert _status(url) == 401
        assert _status(url, {"Authorization": "Bearer wrong"}) == 401
        assert _status(url, {"Authorization": "Bearer s3cret"}) == 200
    finally:
        process.terminate()
        _finish(process)


def _answers(url: str) -> bool:
    try:
        _status(url)
    except OSError:
        return False
    return True
