"""The dashboard in a real browser: headless Chromium (Debian's package, driven by
Playwright) against a live fleet on Redis.

Checks docs/dashboard.md: each page loads without console errors, a task run shows up
without a reload (the live stream), the Revoke button revokes (the backend says
REVOKED) and the Replay button replays a dead letter (the broker has it back in its
queue). A real worker (`celeriac -A tasks worker -E`) and a real dashboard
(`celeriac -A tasks dashboard`) run as subprocesses, stopped by pid at the end.

Screenshots of each page go to the test's temporary directory; with
`CELERIAC_DASHBOARD_SCREENSHOTS=docs/images` they also replace the committed ones.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import require_redis, unique, wait_for
from tests.integration.conftest import import_tasks, write_tasks
from tests.integration.worker_tasks import APP

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = os.environ.get("CELERIAC_DASHBOARD_SCREENSHOTS", "")

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
app.conf.task_send_sent_event = True


@app.task
def add(x, y):
    return x + y


@app.task
def slow(seconds):
    time.sleep(seconds)
    return seconds


@app.task
def fail(message):
    raise ValueError(message)
"""
)


@dataclass
class Fleet:
    tasks: Any
    directory: Path
    url: str
    queue: str
    side_queue: str
    shots: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(directory: Path, log: str, *args: str) -> subprocess.Popen[bytes]:
    handle = (directory / log).open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celeriac", "-A", "tasks", *args],
        cwd=directory,
        stdout=handle,
        stderr=handle,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    handle.close()
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    redis_url = require_redis()
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    name = unique("dash")
    directory = tmp_path_factory.mktemp("dashboard")
    environment = {
        "TEST_BROKER_URL": redis_url,
        "TEST_KEY_PREFIX": f"{name}:",
        "TEST_QUEUE": name,
    }
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    write_tasks(directory, SOURCE)
    tasks = import_tasks(directory)
    port = _free_port()
    worker = _start(
        directory, "worker.log", "worker", "-l", "info", "-E", "-P", "threads", "-c", "2"
    )
    # The worker sends task events (-E): the dashboard need not broadcast
    # enable_events to every worker on the shared server.
    dashboard = _start(
        directory, "dashboard.log", "dashboard", "--port", str(port), "--no-enable-events"
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: "ready" in (directory / "worker.log").read_text() or worker.poll() is not None,
            timeout=30,
            what="the worker to start",
        )
        assert worker.poll() is None, (directory / "worker.log").read_text()
        wait_for(
            lambda: _answers(f"{url}/queues") or dashboard.poll() is not None,
            timeout=30,
            what="the dashboard to answer",
        )
        assert dashboard.poll() is None, (directory / "dashboard.log").read_text()
        yield Fleet(tasks, directory, url, name, f"{name}.side", directory / "shots")
    finally:
        _stop(dashboard)
        _stop(worker)
        tasks.app.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        import redis

        client = redis.Redis.from_url(redis_url)
        try:
            keys = list(client.scan_iter(match=f"{name}:*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
        sys.modules.pop("tasks", None)


@pytest.fixture(scope="module")
def browser(fleet: Fleet) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    tab = context.new_page()
    tab.errors = []
    tab.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda exc: tab.errors.append(str(exc)))
    try:
        yield tab
    finally:
        context.close()


def _live(page: Any) -> None:
    """Wait until the page's live stream is connected."""
    page.wait_for_selector("#live-status.on", timeout=15_000)


def _shoot(page: Any, fleet: Fleet, name: str) -> None:
    fleet.shots.mkdir(exist_ok=True)
    target = fleet.shots / f"dashboard-{name}.png"
    page.screenshot(path=str(target), full_page=True)
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(target, Path(SCREENSHOTS) / target.name)


def _dead_letter(fleet: Fleet) -> str:
    """Dead-letter one real message from the side queue (no worker reads it); its id."""
    app = fleet.tasks.app
    app.send_task("tasks.add", (20, 22), queue=fleet.side_queue)
    broker = app.create_broker(consumer_id=f"{fleet.queue}-test:1")
    try:
        deliveries = wait_for(
            lambda: broker.receive([fleet.side_queue], limit=1, timeout=1.0),
            timeout=15,
            what="the side queue's message",
        )
        broker.dead_letter(deliveries[0], reason="poisoned: the test dead-lettered it")
    finally:
        broker.close()
    letters = app.broker.list_dead_letters(limit=100)
    assert letters, "the dead letter was not stored"
    return str(letters[-1].id)


def test_each_page_loads_without_console_errors(fleet: Fleet, page: Any) -> None:
    app = fleet.tasks.app
    from celeriac import chain

    result = chain(fleet.tasks.add.s(1, 1), fleet.tasks.add.s(2), fleet.tasks.add.s(3))()
    assert result.get(timeout=20) == 7
    failed = fleet.tasks.fail.delay("<b>not bold</b>")
    wait_for(lambda: failed.state == "FAILURE", timeout=20, what="the failing task")
    fleet.tasks.add.apply_async((5, 5), countdown=600)
    _dead_letter(fleet)
    first = result.parent.parent.id

    pages = [
        ("workers", "/workers", "#workers tbody tr.state-online"),
        ("queues", "/queues", f"#queues td:text-is('{fleet.queue}')"),
        ("tasks", "/tasks", "#tasks tr.task-row"),
        ("task", f"/tasks/{first}", "#graph g.node"),
        ("dead-letters", "/dead-letters", "#dead-letters tr[data-id]"),
        ("charts", "/charts", "#chart-throughput polyline"),
    ]
    for name, path, ready in pages:
        response = page.goto(fleet.url + path)
        assert response.status == 200, name
        _live(page)
        page.wait_for_selector(ready, timeout=15_000)
        _shoot(page, fleet, name)
    assert page.errors == []
    graph = page.goto(f"{fleet.url}/tasks/{first}")
    assert graph is not None
    assert page.locator("#graph g.node.state-SUCCESS").count() == 3
    assert app.backend.get(failed.id).status == "FAILURE"
    # The exception's text is shown escaped, not as markup.
    page.goto(f"{fleet.url}/tasks/{failed.id}")
    assert "<b>not bold</b>" in page.inner_text("#live")
    assert page.locator("#live b").count() == 0
    assert page.errors == []


def test_a_task_run_shows_up_without_a_reload(fleet: Fleet, page: Any) -> None:
    page.goto(f"{fleet.url}/tasks")
    _live(page)
    page.evaluate("window.notReloaded = true")
    result = fleet.tasks.add.delay(40, 2)
    row = page.wait_for_selector(f'tr.task-row[data-id="{result.id}"]', timeout=15_000)
    assert row is not None
    page.wait_for_selector(f'tr.task-row[data-id="{result.id}"] .state-SUCCESS', timeout=15_000)
    assert page.evaluate("window.notReloaded") is True
    assert page.errors == []


def test_the_revoke_button_revokes(fleet: Fleet, page: Any) -> None:
    waiting = fleet.tasks.add.apply_async((1, 2), countdown=600)
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{fleet.url}/tasks/{waiting.id}")
    _live(page)
    page.click("#revoke")
    page.wait_for_selector("#notice", timeout=15_000)
    assert "revoked" in page.inner_text("#notice")
    meta = fleet.tasks.app.backend.get(waiting.id)
    assert meta is not None
    assert meta.status == "REVOKED"
    assert page.errors == []


def test_the_replay_button_replays_a_dead_letter(fleet: Fleet, page: Any) -> None:
    letter = _dead_letter(fleet)
    broker = fleet.tasks.app.broker
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{fleet.url}/dead-letters")
    _live(page)
    page.click(f'tr[data-id="{letter}"] button.replay')
    page.wait_for_selector("#notice", timeout=15_000)
    assert f"replayed {letter}" in page.inner_text("#notice")
    assert letter not in {d.id for d in broker.list_dead_letters(limit=1000)}
    assert broker.size(fleet.side_queue) == 1
    assert page.errors == []
