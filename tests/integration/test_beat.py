"""`celeriac beat` and `worker -B` as a user runs them: real processes, real brokers.

Checks docs/periodic-tasks.md: beat sends through the normal send path, so celeriac
workers and stock Celery 5.7 workers both run what it sends; `worker -B` embeds it;
`--dry-run` lists the next due times; a malformed entry stops beat with its name.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from celeriac.cli import EX_CONFIG
from tests.helpers import require_redis, unique, wait_for
from tests.integration.conftest import RunWorker, write_tasks
from tests.integration.interop_redis import Shared, import_module, stock_worker

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration

SOURCE = """
import os
from pathlib import Path

from celeriac import Celeriac
from celeriac.schedules import crontab

app = Celeriac("tasks", broker="sqlite:///app.db")
app.conf.update(timezone="America/New_York", beat_lease_seconds=2.0)
app.conf.beat_schedule = {
    "stamp-every-second": {"task": "tasks.stamp", "schedule": 1.0, "args": ("beat",)},
    "weekday-mornings": {
        "task": "tasks.stamp",
        "schedule": crontab(minute=30, hour=7, day_of_week="mon-fri"),
        "args": ("morning",),
    },
}


@app.task
def stamp(tag):
    with open(Path(__file__).with_name("stamps.txt"), "a") as handle:
        handle.write(tag + "\\n")
    return tag
"""


def stamps(directory: Path) -> list[str]:
    path = directory / "stamps.txt"
    return path.read_text().split() if path.exists() else []


@pytest.fixture
def run_beat(tasks_dir: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        log = (tasks_dir / f"beat-{len(started)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "celeriac", "-A", "tasks", "beat", "-l", "info", *args],
            cwd=tasks_dir,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def celeriac(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celeriac", "-A", "tasks", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_beat_sends_and_a_worker_runs_each_tick(tasks_dir, run_beat, run_worker: RunWorker):
    write_tasks(tasks_dir, SOURCE)
    beat = run_beat()
    run_worker("-P", "threads", "-c", "2")
    wait_for(lambda: len(stamps(tasks_dir)) >= 3, timeout=30, what="three periodic runs")
    beat.send_signal(signal.SIGTERM)
    assert beat.wait(timeout=10) == 0
    log = (tasks_dir / "beat-0.log").read_text()
    assert "Scheduler: Sending due task stamp-every-second (tasks.stamp)" in log
    assert "released the lease" in log
    assert set(stamps(tasks_dir)) == {"beat"}


def test_worker_with_B_runs_periodic_tasks(tasks_dir, run_worker: RunWorker):
    write_tasks(tasks_dir, SOURCE)
    worker = run_worker("-B", "-P", "threads", "-c", "2")
    wait_for(lambda: len(stamps(tasks_dir)) >= 2, timeout=30, what="two periodic runs")
    assert "beat embedded" in worker.output()


def test_dry_run_lists_the_next_due_times_in_the_app_time_zone(tasks_dir):
    write_tasks(tasks_dir, SOURCE)
    run = celeriac(tasks_dir, "beat", "--dry-run", "-n", "3")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    at = lines.index("weekday-mornings  (tasks.stamp, <crontab: 30 7 * * mon-fri (m/h/dM/MY/d)>)")
    mornings = lines[at + 1 : at + 4]
    assert len(mornings) == 3
    assert all(re.fullmatch(r"  \d{4}-\d\d-\d\dT07:30:00-0[45]:00", line) for line in mornings)
    assert not stamps(tasks_dir)


def test_a_malformed_entry_stops_beat_with_its_name(tasks_dir):
    write_tasks(
        tasks_dir,
        SOURCE + '\napp.conf.beat_schedule["broken"] = {"task": "tasks.stamp", "every": 5}\n',
    )
    run = celeriac(tasks_dir, "beat")
    assert run.returncode == EX_CONFIG
    assert "beat_schedule['broken']" in run.stderr


def test_two_beats_on_one_schedule_send_each_tick_once(tasks_dir, run_beat, run_worker):
    write_tasks(tasks_dir, SOURCE)
    run_beat()
    run_beat()
    run_worker("-P", "threads", "-c", "2")
    wait_for(lambda: len(stamps(tasks_dir)) >= 4, timeout=30, what="four periodic runs")
    logs = [(tasks_dir / f"beat-{n}.log").read_text() for n in (0, 1)]
    senders = [log for log in logs if "Sending due task" in log]
    assert len(senders) == 1


@pytest.mark.redis
def test_stock_celery_worker_runs_what_celeriac_beat_sends(tmp_path):
    url = require_redis()
    name = unique("beatstock")
    shared = Shared(url=url, prefix=f"{name}:", queue=name)
    try:
        (tmp_path / "stockproj.py").write_text(shared.celery_source())
        ours = shared.celeriac_source() + textwrap.dedent(
            """
            app.conf.beat_schedule = {
                "whoami": {"task": "interop.whoami", "schedule": 1.0, "args": ("beat",)},
            }
            """
        )
        app_dir = tmp_path / "ours"
        app_dir.mkdir()
        (app_dir / "tasks.py").write_text(ours)
        with stock_worker(tmp_path, "stockproj", "-P", "solo") as worker:
            with (app_dir / "beat.log").open("wb") as log:
                beat = subprocess.Popen(
                    [sys.executable, "-m", "celeriac", "-A", "tasks", "beat", "-l", "info"],
                    cwd=app_dir,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            try:
                wait_for(
                    lambda: worker.output().count("interop.whoami") >= 4,
                    timeout=40,
                    what="the stock worker to run two beat sends",
                )
            finally:
                beat.send_signal(signal.SIGTERM)
                beat.wait(timeout=10)
            worker.assert_healthy()
        sent = re.findall(r"id=([0-9a-f-]{36})", (app_dir / "beat.log").read_text())
        assert len(sent) >= 2
        module = import_module(app_dir, "tasks")
        try:
            result = module.app.AsyncResult(sent[0]).get(timeout=10)
        finally:
            module.app.close()
        assert result["tag"] == "beat"
        assert result["impl"] == "celery"
    finally:
        shared.delete_keys()


@pytest.mark.rabbitmq
@pytest.mark.redis
def test_on_rabbitmq_beat_keeps_its_state_in_the_result_backend(
    tasks_dir, run_beat, run_worker: RunWorker
):
    from tests.helpers import require_rabbitmq

    amqp_url, redis_url = require_rabbitmq(), require_redis()
    name = unique("beatamqp")
    source = SOURCE.replace(
        'app = Celeriac("tasks", broker="sqlite:///app.db")',
        f"app = Celeriac('tasks', broker={amqp_url!r}, backend={redis_url!r})\n"
        f"app.conf.update(task_default_queue={name!r}, "
        f"result_backend_transport_options={{'global_keyprefix': {name + ':'!r}}})",
    )
    write_tasks(tasks_dir, source)
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        run_beat()
        run_worker("-P", "threads", "-c", "2")
        wait_for(lambda: len(stamps(tasks_dir)) >= 2, timeout=30, what="two periodic runs")
        assert client.exists(f"{name}:_celeriac.beat.celerybeat-schedule.entries")
    finally:
        keys = list(client.scan_iter(match=f"{name}:*"))
        if keys:
            client.delete(*keys)
        client.close()
        from celeriac.brokers.amqp.broker import AMQPBroker

        broker = AMQPBroker(amqp_url)
        try:
            broker.delete_queue(name)
        finally:
            broker.close()
