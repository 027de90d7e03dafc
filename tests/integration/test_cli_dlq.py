"""`celeriac -A tasks dlq list|show|replay|purge` manages real dead letters.

Checks docs/worker.md, "Delivery" ("Bad messages (... unknown task ...) are logged with
the reason and the task id, moved to the dead-letter store, and the worker carries on.
`celeriac -A tasks dlq list|show|replay|purge` manages them"), docs/redis.md, "Dead
letters and rate limits" ("`celeriac dlq list|replay|purge` manages them, and a replay
publishes it again to its queue"), and docs/sqlite.md, "Dead letters" and
docs/rabbitmq.md, "Dead letters" (replay publishes the message to its queue again and
removes that one dead letter).

The dead letters are made for real: messages for a task the worker does not know are
published, and a solo worker (`celeriac -A tasks worker -P solo`) dead-letters them.
Every command runs the real `celeriac` in a subprocess, stopped by pid at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from celeriac.cli import EX_USAGE
from tests.helpers import wait_for
from tests.integration.conftest import import_tasks, write_tasks
from tests.integration.worker_tasks import SOURCE

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from celeriac.brokers.base import Broker
    from tests.integration.conftest import RunWorker

pytestmark = pytest.mark.integration

BROKERS = pytest.mark.parametrize("broker_env", ["sqlite", "redis", "amqp"], indirect=True)
UNKNOWN_TASK = "tasks.does_not_exist"


@dataclass
class DeadLetters:
    """What the fixture made: the test's app module, its queue, and the task ids whose
    messages were dead-lettered."""

    tasks: Any
    directory: Path
    queue: str
    task_ids: list[str]

    @property
    def broker(self) -> Broker:
        broker: Broker = self.tasks.app.broker
        return broker

    def letters(self) -> dict[str, str]:
        """Task id -> dead-letter id, read through the broker API."""
        return {
            str(letter.message.headers.get("id")): letter.id
            for letter in self.broker.list_dead_letters(limit=1000)
        }


def celeriac(
    directory: Path, *args: str, answer: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `celeriac -A tasks ARGS` in `directory`; kill it by pid if it overstays."""
    process = subprocess.Popen(
        [sys.executable, "-m", "celeriac", "-A", "tasks", *args],
        cwd=directory,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        stdout, stderr = process.communicate(input=answer or "", timeout=60)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def dead(broker_env: str, tasks_dir: Path, run_worker: RunWorker) -> Iterator[DeadLetters]:
    """Two messages for an unknown task, dead-lettered by a real worker that is then
    stopped (so nothing consumes what a test replays)."""
    write_tasks(tasks_dir, SOURCE)
    tasks = import_tasks(tasks_dir)
    queue = tasks.app.conf.task_default_queue
    made = DeadLetters(tasks, tasks_dir, queue, [])
    try:
        tasks.app.broker.declare(queue)
        made.task_ids = [tasks.app.send_task(UNKNOWN_TASK, args=(n,)).id for n in range(2)]
        worker = run_worker("-P", "solo")
        wait_for(
            lambda: set(made.task_ids) <= set(made.letters()),
            timeout=60,
            what="both messages dead-lettered",
        )
        logged = [f"{UNKNOWN_TASK}[{task_id}] moved to dead letters" for task_id in made.task_ids]
        wait_for(
            lambda: all(line in worker.output() for line in logged),
            timeout=10,
            what="a dead-letter log line per message",
        )
        assert worker.process.poll() is None, "the worker did not carry on"
        worker.stop()
        assert worker.process.poll() is not None
        yield made
    finally:
        tasks.app.close()


@BROKERS
def test_dlq_list_shows_each_dead_letter_with_its_task_and_reason(dead: DeadLetters) -> None:
    done = celeriac(dead.directory, "dlq", "list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2, done.stdout
    letters = dead.letters()
    for task_id in dead.task_ids:
        (line,) = [line for line in lines if f"{UNKNOWN_TASK}[{task_id}]" in line]
        assert line.startswith(f"{letters[task_id]}  "), line
        assert f"  {dead.queue}  " in line
        assert f"unknown task {UNKNOWN_TASK}" in line


@BROKERS
def test_dlq_show_prints_the_whole_dead_letter(dead: DeadLetters) -> None:
    task_id = dead.task_ids[0]
    letter_id = dead.letters()[task_id]
    done = celeriac(dead.directory, "dlq", "show", letter_id)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["id"] == letter_id
    assert shown["queue"] == dead.queue
    assert shown["reason"].startswith(f"unknown task {UNKNOWN_TASK}")
    assert shown["headers"]["id"] == task_id
    assert shown["headers"]["task"] == UNKNOWN_TASK
    assert shown["content_type"] == "application/json"
    assert json.loads(shown["body"])[0] == [0]


@BROKERS
def test_dlq_show_of_an_unknown_id_exits_with_one_line(dead: DeadLetters) -> None:
    done = celeriac(dead.directory, "dlq", "show", "no-such-letter")
    assert done.returncode == EX_USAGE
    assert done.stderr.strip() == "Error: no dead letter 'no-such-letter'"


@BROKERS
def test_dlq_replay_puts_the_message_back_in_its_queue(dead: DeadLetters) -> None:
    replayed, kept = dead.task_ids
    before = dead.broker.size(dead.queue)
    done = celeriac(dead.directory, "dlq", "replay", dead.letters()[replayed])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "replayed 1"
    assert dead.broker.size(dead.queue) == before + 1
    assert set(dead.letters()) == {kept}
    delivered = wait_for(
        lambda: dead.broker.receive([dead.queue], limit=10, timeout=1.0),
        timeout=20,
        what="the replayed message",
    )
    assert [d.message.headers["id"] for d in delivered] == [replayed]
    for delivery in delivered:
        dead.broker.ack(delivery)


@BROKERS
def test_dlq_purge_without_yes_asks_and_keeps_them_on_no(dead: DeadLetters) -> None:
    done = celeriac(dead.directory, "dlq", "purge", answer="n\n")
    assert done.returncode != 0
    assert "Delete every dead letter?" in done.stdout
    assert set(dead.letters()) == set(dead.task_ids)


@BROKERS
def test_dlq_purge_yes_deletes_every_dead_letter(dead: DeadLetters) -> None:
    done = celeriac(dead.directory, "dlq", "purge", "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "purged 2"
    assert dead.letters() == {}
    listed = celeriac(dead.directory, "dlq", "list")
    assert listed.stdout.strip() == "no dead letters"


TRIMMING_APP = """
from pathlib import Path

from celeriac import Celeriac

HERE = Path(__file__).resolve().parent
app = Celeriac(
    "tasks",
    broker=f"sqlite:///{HERE / 'celeriac.db'}",
    broker_transport_options={"dead_letter_body_max": 100},
)
"""


def test_dlq_list_and_show_say_what_was_trimmed(tasks_dir: Path) -> None:
    write_tasks(tasks_dir, TRIMMING_APP)
    tasks = import_tasks(tasks_dir)
    broker = tasks.app.broker
    try:
        broker.declare("celery")
        sent = tasks.app.send_task(UNKNOWN_TASK, args=("x" * 1000,))
        [delivery] = broker.receive(["celery"], limit=1, timeout=5.0)
        full = len(delivery.message.body)
        broker.dead_letter(delivery, reason="too big to keep")
        [letter] = broker.list_dead_letters()
    finally:
        tasks.app.close()

    listed = celeriac(tasks_dir, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert f"{UNKNOWN_TASK}[{sent.id}]  too big to keep" in listed.stdout
    assert f"(body trimmed: kept 100 of {full} bytes)" in listed.stdout

    shown = json.loads(celeriac(tasks_dir, "dlq", "show", letter.id).stdout)
    assert shown["body_size"] == full
    assert shown["trimmed"] == f"body trimmed: kept 100 of {full} bytes"
    assert len(shown["body"]) == 100

    replayed = celeriac(tasks_dir, "dlq", "replay", letter.id)
    assert replayed.returncode == EX_USAGE
    assert "cannot be replayed: only the first 100 of its" in replayed.stderr
