"""`/metrics`: a real prefork worker on Redis scraped over HTTP, and the fleet's gauges
read from the broker; every scrape parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from celeriac.exceptions import TimeLimitExceeded
from celeriac.metrics import CONTENT_TYPE, asgi_app, render
from tests.helpers import require_redis, unique, wait_for
from tests.integration.conftest import RunWorker, import_tasks, write_tasks
from tests.integration.worker_tasks import APP

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "observability"
EXAMPLE = EXAMPLES / "dashboard_metrics.py"


pytestmark = [pytest.mark.integration, pytest.mark.redis]

SOURCE = (
    """
import os
import time
from pathlib import Path

from celeriac import Celeriac

HERE = Path(__file__).resolve().parent
"""
    + APP
    + """

@app.task
def add(x, y):
    time.sleep(0.05)
    return x + y


@app.task
def boom():
    raise ValueError("boom")


@app.task
def nap(seconds, marker):
    Path(HERE / marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return marker
"""
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def tasks(tasks_dir: Path, broker_env: str) -> Any:
    write_tasks(tasks_dir, SOURCE)
    module = import_tasks(tasks_dir)
    yield module
    module.app.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return parse(response.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_a_prefork_worker_counts_tasks_by_name_and_state(tasks: Any, run_worker: RunWorker) -> None:
    port = free_port()
    worker = run_worker("-c", "2", "--metrics-port", str(port))
    results = [tasks.add.delay(i, i) for i in range(6)]
    failures = [tasks.boom.delay() for _ in range(2)]
    assert [r.get(timeout=20) for r in results] == [2 * i for i in range(6)]
    for failure in failures:
        with pytest.raises(ValueError, match="boom"):
            failure.get(timeout=20)

    def counted() -> Samples:
        samples = scrape(port)
        done = value(samples, "celeriac_tasks_total", task="tasks.add", state="success")
        return samples if done == 6 else {}

    samples = wait_for(counted, timeout=10, what="six successes counted")
    assert value(samples, "celeriac_tasks_total", task="tasks.boom", state="failure") == 2
    assert value(samples, "celeriac_task_runtime_seconds_count", task="tasks.add") == 6
    runtime = value(samples, "celeriac_task_runtime_seconds_sum", task="tasks.add")
    assert runtime is not None
    assert 6 * 0.05 <= runtime < 6 * 5.0
    # Each of the buckets holds at most the count; none of these ran 50 ms or less.
    assert value(samples, "celeriac_task_runtime_seconds_bucket", task="tasks.add", le="0.05") == 0
    assert value(samples, "celeriac_task_runtime_seconds_bucket", task="tasks.add", le="+Inf") == 6
    # The counts come from the children: the supervisor serves them, on loopback only.
    listening = [
        c.laddr
        for c in psutil.Process(worker.pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening == [("127.0.0.1", port)]


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_a_killed_child_counts_as_a_crash_and_its_message_as_a_redelivery(
    tasks: Any, tasks_dir: Path, run_worker: RunWorker
) -> None:
    port = free_port()
    run_worker("-c", "2", "--metrics-port", str(port))
    result = tasks.nap.delay(1.0, "victim")
    marker = tasks_dir / "victim"
    wait_for(marker.exists, timeout=15, what="the task started")
    os.kill(int(wait_for(marker.read_text, timeout=5)), signal.SIGKILL)
    assert result.get(timeout=30) == "victim"

    def counted() -> Samples:
        samples = scrape(port)
        ran = value(samples, "celeriac_tasks_total", task="tasks.nap", state="success")
        return samples if ran == 1 else {}

    samples = wait_for(counted, timeout=10, what="the rerun counted")
    assert value(samples, "celeriac_worker_crashes_total", reason="crashed") == 1
    assert value(samples, "celeriac_redeliveries_total", task="tasks.nap") == 1


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_the_worker_removes_its_metrics_files_when_it_stops(
    tasks: Any, run_worker: RunWorker
) -> None:
    port = free_port()
    worker = run_worker("-c", "1", "--metrics-port", str(port))
    assert tasks.add.delay(1, 1).get(timeout=20) == 2
    found = re.search(r"values in (\S+)\)", worker.output())
    assert found is not None, worker.output()
    directory = found.group(1)
    # The child's files (task_postrun counts it just after the result is stored).
    wait_for(lambda: os.listdir(directory), timeout=10, what="the metrics files")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    assert not os.path.exists(directory)


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_the_fleet_view_reports_depth_dead_letters_and_presence(
    tasks: Any, tasks_dir: Path, run_worker: RunWorker
) -> None:
    app = tasks.app
    queue = os.environ["TEST_QUEUE"]
    idle = unique("idle")  # nobody consumes it
    run_worker("-c", "1")
    app.send_task("tasks.nobody_knows", queue=queue)
    wait_for(
        lambda: value(parse(render(app, queues=[queue]).decode()), "celeriac_dead_letters") == 1,
        timeout=15,
        what="the unknown task dead-lettered",
    )
    running = tasks.nap.delay(30, "holder")
    wait_for((tasks_dir / "holder").exists, timeout=15, what="the task started")
    for _ in range(3):
        tasks.add.apply_async((1, 1), countdown=300)
    for _ in range(2):
        tasks.add.apply_async((1, 1), queue=idle)

    samples = parse(render(app, queues=[queue, idle]).decode())
    assert value(samples, "celeriac_queue_messages", queue=queue, state="delayed") == 3
    assert value(samples, "celeriac_queue_messages", queue=queue, state="held") == 1
    assert value(samples, "celeriac_queue_messages", queue=queue, state="ready") == 0
    assert value(samples, "celeriac_queue_messages", queue=idle, state="ready") == 2
    assert value(samples, "celeriac_queue_messages", queue=idle, state="held") == 0
    assert value(samples, "celeriac_workers_present") == 1
    assert value(samples, "celeriac_worker_processes_present") == 1
    # Nothing is overdue: no age is claimed.
    assert value(samples, "celeriac_queue_oldest_message_age_seconds", queue=queue) is None
    running.revoke(terminate=True)


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_an_overdue_message_reports_its_age(tasks: Any, run_worker: RunWorker) -> None:
    app = tasks.app
    queue = os.environ["TEST_QUEUE"]
    # A stalled worker: its presence record is fresh, so the ETA waits broker-side, but
    # no fetch of its promotes the message when it comes due.
    worker = run_worker("-c", "1")
    wait_for(
        lambda: value(parse(render(app, queues=[queue]).decode()), "celeriac_workers_present"),
        timeout=15,
        what="the worker's presence record",
    )
    stalled = [worker.pid, *worker.children()]
    for pid in stalled:
        os.kill(pid, signal.SIGSTOP)
    try:
        tasks.add.apply_async((1, 1), countdown=0.2)
        age = wait_for(
            lambda: value(
                parse(render(app, queues=[queue]).decode()),
                "celeriac_queue_oldest_message_age_seconds",
                queue=queue,
            ),
            timeout=10,
            what="an overdue age",
        )
        assert age is not None
        assert 0 < age < 10
    finally:
        for pid in stalled:
            os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_the_asgi_app_serves_the_fleet_view(tasks: Any) -> None:
    import httpx

    queue = os.environ["TEST_QUEUE"]
    tasks.add.apply_async((1, 1), queue=queue)

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=asgi_app(tasks.app, queues=[queue]))
        async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
            return await client.get("/metrics")

    response = asyncio.run(get())
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    samples = parse(response.text)
    assert value(samples, "celeriac_queue_messages", queue=queue, state="ready") == 1


def test_the_starlette_example_serves_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import httpx

    monkeypatch.setenv("BROKER_URL", require_redis())
    spec = importlib.util.spec_from_file_location("dashboard_metrics", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    async def call() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=module.web)
        async with httpx.AsyncClient(transport=transport, base_url="http://web") as client:
            return await client.get("/metrics"), await client.post("/metrics")

    try:
        response, refused = asyncio.run(call())
    finally:
        module.app.close()
    assert response.status_code == 200
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"celeriac_queue_messages", "celeriac_dead_letters", "celeriac_workers_present"} <= names
    assert refused.status_code == 405


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_a_busy_metrics_port_stops_the_worker_with_a_clear_error(
    tasks: Any, run_worker: RunWorker
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        worker = run_worker("--metrics-port", str(port), wait=False)
        assert worker.wait(timeout=30) == 78  # EX_CONFIG
    assert f"--metrics-port {port} --metrics-bind 127.0.0.1: cannot listen" in worker.output()


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_promtool_accepts_the_worker_and_fleet_views(tasks: Any, run_worker: RunWorker) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Prometheus' own linter; the parser checks above)")
    port = free_port()
    run_worker("-c", "2", "--metrics-port", str(port))
    assert tasks.add.delay(1, 2).get(timeout=20) == 3
    with pytest.raises(ValueError, match="boom"):
        tasks.boom.delay().get(timeout=20)
    failed = {"task": "tasks.boom", "state": "failure"}
    wait_for(lambda: value(scrape(port), "celeriac_tasks_total", **failed))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        worker_view = response.read()
    for view in (worker_view, render(tasks.app)):
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=view, capture_output=True, timeout=30
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_a_threads_worker_serves_the_same_metrics(tasks: Any, run_worker: RunWorker) -> None:
    port = free_port()
    run_worker("-P", "threads", "-c", "4", "--metrics-port", str(port))
    results = [tasks.add.delay(i, 1) for i in range(5)]
    assert [r.get(timeout=20) for r in results] == [i + 1 for i in range(5)]
    success = {"task": "tasks.add", "state": "success"}
    wait_for(lambda: value(scrape(port), "celeriac_tasks_total", **success) == 5, timeout=10)
    assert value(scrape(port), "celeriac_task_runtime_seconds_count", task="tasks.add") == 5


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_a_child_killed_at_its_hard_time_limit_counts_as_a_time_limit_crash(
    tasks: Any, run_worker: RunWorker
) -> None:
    port = free_port()
    run_worker("-c", "1", "--time-limit", "1", "--metrics-port", str(port))
    result = tasks.nap.delay(30, "overtime")
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=30)
    reason = {"reason": "time_limit"}
    wait_for(lambda: value(scrape(port), "celeriac_worker_crashes_total", **reason) == 1)
    assert value(scrape(port), "celeriac_worker_crashes_total", reason="crashed") == 0


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_a_given_multiprocess_directory_is_used_and_kept(
    tasks: Any, tmp_path: Path, run_worker: RunWorker
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    port = free_port()
    worker = run_worker(
        "-c", "1", "--metrics-port", str(port), env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    )
    assert tasks.add.delay(2, 2).get(timeout=20) == 4
    success = {"task": "tasks.add", "state": "success"}
    wait_for(lambda: value(scrape(port), "celeriac_tasks_total", **success) == 1, timeout=10)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    # Left in place, with the values written there.
    assert {path.name.split("_")[0] for path in directory.iterdir()} >= {"counter", "histogram"}
