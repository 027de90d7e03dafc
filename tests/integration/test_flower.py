"""Stock Flower 2.x (from PyPI, unchanged) watching a celeriac worker, through its HTTP API.

Flower runs as `celery -A stockproj flower` in its own process; the worker is a celeriac
prefork worker with task events on (`-E`). Flower must list the worker with its pool and
concurrency, show a task's lifecycle from the events, and its revoke and rate-limit
buttons (the API endpoints behind them) must act on the celeriac worker.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import wait_for
from tests.integration.interop_redis import import_module

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.integration.conftest import RunWorker
    from tests.integration.mixed_fleet import Fleet

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Flower:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, **form: str) -> tuple[int, str]:
        data = urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(self.base + path, data=data, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/healthcheck", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False


@pytest.fixture
def flower(fleet: Fleet) -> Iterator[Flower]:
    port = _free_port()
    log = fleet.directory / "flower.log"
    environment = {
        **os.environ,
        "PYTHONPATH": str(fleet.directory),
        "FLOWER_UNAUTHENTICATED_API": "true",
    }
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "stockproj",
                "flower",
                "--address=127.0.0.1",
                f"--port={port}",
                "--inspect_timeout=3000",
            ],
            cwd=fleet.directory,
            env=environment,
            stdout=handle,
            stderr=handle,
        )
    client = Flower(port)
    try:
        wait_for(lambda: client.answers() or process.poll() is not None, timeout=60, what="Flower")
        assert process.poll() is None, log.read_text()
        yield client
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_flower_lists_a_celeriac_worker_and_its_tasks_and_acts_on_it(
    fleet: Fleet, run_worker: RunWorker, flower: Flower
) -> None:
    node = f"{fleet.queue}@test"
    run_worker("-c", "2", "-E", "-n", node)

    def listed() -> dict[str, Any]:
        workers: dict[str, Any] = flower.get("/api/workers?refresh=1")
        return workers

    wait_for(lambda: node in listed(), timeout=60, what="Flower to list the worker")
    info = listed()[node]
    assert info["stats"]["pool"]["max-concurrency"] == 2
    assert info["registered"] == ["rc.add", "rc.fail", "rc.nap"]
    assert [q["name"] for q in info["active_queues"]] == [fleet.queue]

    cproj = import_module(fleet.directory, "cproj")
    try:
        done = cproj.add.delay(20, 22)
        assert done.get(timeout=20) == 42

        def lifecycle() -> dict[str, Any]:
            try:
                task: dict[str, Any] = flower.get(f"/api/task/info/{done.id}")
            except urllib.error.HTTPError:
                return {}
            return task

        wait_for(
            lambda: lifecycle().get("state") == "SUCCESS", timeout=30, what="the task in Flower"
        )
        task = lifecycle()
        assert task["name"] == "rc.add"
        assert task["worker"] == node
        assert task["result"] == "42"
        assert task["received"] <= task["started"] <= task["succeeded"]
        assert task["runtime"] >= 0

        later = cproj.nap.apply_async((0, "flower-revoked"), countdown=3)
        status, body = flower.post(f"/api/task/revoke/{later.id}")
        assert status == 200, body
        wait_for(lambda: later.state == "REVOKED", timeout=10, what="REVOKED to be stored")
        after = cproj.nap.apply_async((0, "flower-after"), countdown=4)
        assert after.get(timeout=30) == "flower-after"
        assert not fleet.started("flower-revoked")

        status, body = flower.post(
            "/api/task/rate-limit/rc.add", workername=node, ratelimit="100/m"
        )
        assert status == 200, body
        assert json.loads(body) == {"message": "new rate limit set successfully"}
    finally:
        cproj.app.close()
