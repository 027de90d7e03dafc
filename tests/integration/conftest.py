"""Real worker processes for integration tests.

`run_worker(source, *args)` writes `source` as module `tasks.py` in a fresh directory,
starts `celeriac -A tasks worker ...` there, waits until it answers, and stops it (and
every child it made) by pid when the test ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import psutil
import pytest

from tests.contract.conftest import broker_factory  # noqa: F401  (brokers for worker-part tests)
from tests.helpers import delete_redis_keys, require_rabbitmq, require_redis, unique, wait_for
from tests.integration.mixed_fleet import fleet  # noqa: F401  (celeriac + stock Celery projects)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration


@dataclass
class WorkerProcess:
    """A running `celeriac worker` and how to reach it."""

    process: subprocess.Popen[bytes]
    directory: Path
    log: Path
    known_pids: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.process.pid

    def children(self) -> list[int]:
        """Pids of the worker's child processes, right now."""
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        pids = [kid.pid for kid in kids]
        self.known_pids.update(pids)
        return pids

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """Stop the worker and every child it ever had (by pid)."""
        self.children()
        if self.process.poll() is None:
            # Cold: a teardown need not wait for a long task to finish.
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in self.known_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class RunWorker(Protocol):
    def __call__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        wait: bool = True,
        session: bool = False,
    ) -> WorkerProcess: ...


@pytest.fixture(params=["sqlite", "redis", "amqp"])
def broker_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test on each broker: sets the environment the test's `tasks.py` reads (in
    this process and in the workers it starts). Every test has its own queue (and, on
    Redis, key prefix); what it created on a server is removed afterwards. RabbitMQ runs
    with Redis results, the usual production pairing (and what gives it a crash ledger
    and shared rate limits)."""
    kind: str = request.param
    name = unique("w")
    prefix = f"{name}:"
    for variable in (
        "TEST_BROKER_URL",
        "TEST_BACKEND_URL",
        "TEST_KEY_PREFIX",
        "TEST_DEAD_LETTER_QUEUE",
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("TEST_QUEUE", name)
    redis_url = None
    if kind == "redis":
        redis_url = require_redis()
        monkeypatch.setenv("TEST_BROKER_URL", redis_url)
        monkeypatch.setenv("TEST_KEY_PREFIX", prefix)
    elif kind == "amqp":
        amqp_url = require_rabbitmq()
        redis_url = require_redis()
        monkeypatch.setenv("TEST_BROKER_URL", amqp_url)
        monkeypatch.setenv("TEST_BACKEND_URL", redis_url)
        monkeypatch.setenv("TEST_KEY_PREFIX", prefix)
        monkeypatch.setenv("TEST_DEAD_LETTER_QUEUE", f"{name}.dead")
    yield kind
    if kind == "amqp":
        from celeriac.brokers.amqp.broker import AMQPBroker

        broker = AMQPBroker(amqp_url)
        try:
            for queue in (name, f"{name}.dead"):
                broker.delete_queue(queue)
        finally:
            broker.close()
    if redis_url is not None:
        delete_redis_keys(redis_url, prefix)


@pytest.fixture
def tasks_dir(tmp_path: Path) -> Path:
    """Where `tasks.py` and the SQLite file of the test live."""
    directory = tmp_path / "app"
    directory.mkdir()
    return directory


def write_tasks(directory: Path, source: str) -> None:
    (directory / "tasks.py").write_text(textwrap.dedent(source))


def import_tasks(directory: Path) -> Any:
    """Import the test's `tasks` module in the test process (fresh each time)."""
    sys.modules.pop("tasks", None)
    sys.path.insert(0, str(directory))
    try:
        import tasks  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(directory))
    return tasks


@pytest.fixture
def run_worker(tasks_dir: Path) -> Iterator[RunWorker]:
    """Start workers on the test's `tasks.py`; all stopped by pid at teardown."""
    started: list[WorkerProcess] = []

    def start(
        *args: str, env: dict[str, str] | None = None, wait: bool = True, session: bool = False
    ) -> WorkerProcess:
        # session: the worker leads its own process group (a container's processes, which
        # a test may kill together with os.killpg(worker.pid, ...)).
        log = tasks_dir / f"worker-{len(started)}.log"
        command = [sys.executable, "-m", "celeriac", "-A", "tasks", "worker", "-l", "info", *args]
        environment = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        handle = log.open("wb")
        process = subprocess.Popen(
            command,
            cwd=tasks_dir,
            stdout=handle,
            stderr=handle,
            env=environment,
            start_new_session=session,
        )
        handle.close()
        worker = WorkerProcess(process, tasks_dir, log)
        started.append(worker)
        if wait:
            wait_for(
                lambda: "ready" in worker.output() or process.poll() is not None,
                timeout=20,
                what="worker start",
            )
            if process.poll() is not None:
                pytest.fail(f"worker exited at start:\n{worker.output()}")
        return worker

    yield start
    for worker in started:
        worker.stop()
    sys.modules.pop("tasks", None)


def wait_until_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(
            psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids
        ):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(autouse=True, scope="module")
def _reset_kombu_pools() -> Iterator[None]:
    """Stock Celery keeps connection pools in kombu's process-global registries; closing
    one module's Celery apps force-closes pools a later module would get back. Each
    module starts with fresh ones (a module may share its apps between its tests)."""
    yield
    pools = sys.modules.get("kombu.pools")
    if pools is not None:
        pools.reset()
