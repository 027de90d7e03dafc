"""Poison matrix: bad messages between good ones; each is refused clearly, nothing else hurt.

`size(1000, 1000)` good `work` tasks are published by the producer; between them, raw
poison messages are written straight into the broker in its own layout
(`tests/chaos/poison.py`): invalid JSON, bad base64, non-UTF-8, unknown task, wrong
arguments, oversized body, missing and unaccepted content type, pickle when not
accepted, missing headers, absurd ETA, deeply nested JSON, expired, and a task that
kills its own process every time. One worker with two children consumes them all.

For each poison: the worker logs one line naming the task id and the reason; the
message is in the dead-letter store with that reason (read with `celeriac dlq list`);
the pickle payload never ran (its side-effect file does not exist). Then: the worker
(supervisor) is still the one started, and every good task finished.

Per broker layout: "bad base64" exists only where the envelope carries the body in
base64 (Redis); Redis also gets an entry that is not JSON at all, and SQLite a row whose
headers column is not JSON (the analogues of a corrupt envelope). An expired message is
revoked as in Celery (result REVOKED) and kept in the dead letters with the reason.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests.chaos.conftest import size
from tests.chaos.harness import fail_report, publish_work, settle
from tests.chaos.poison import Poison, inject, task_headers, v2_body
from tests.helpers import wait_for
from tests.integration.conftest import import_tasks

if TYPE_CHECKING:
    from pathlib import Path

    from tests.chaos.ledger import Ledger
    from tests.integration.conftest import RunWorker

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(300)]


class _Exploit:
    """Unpickling this runs a shell command: what must never happen in a worker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _poisons(kind: str, directory: Path) -> list[Poison]:
    def new(name: str, reason: str, **fields: Any) -> Poison:
        task_id = str(uuid.uuid4())
        fields.setdefault("headers", task_headers(task_id))
        fields.setdefault("body", v2_body([5]))
        return Poison(name=name, task_id=task_id, reason=reason, **fields)

    poisons = [
        new("invalid JSON", "SerializationError", body=b'[[5], {}, {"callbacks": nu'),
        new("non-UTF-8", "SerializationError", body=b'[["caf\xe9"], {}, {}]'),
        new("unknown task", "unknown task", headers=None),
        new("wrong arguments", "argument", body=v2_body([1, 2, 3], {"nope": 1})),
        new("oversized", "MessageTooLarge", body=v2_body(["x" * (2 * 1024 * 1024)])),
        new("missing content type", "Content", content_type=None, content_encoding=None),
        new("unaccepted content type", "ContentDisallowed", content_type="application/x-yaml"),
        new(
            "pickle",
            "ContentDisallowed",
            content_type="application/x-python-serialize",
            content_encoding="binary",
            body=pickle.dumps(_Exploit(directory / "pickle-ran")),
        ),
        new("missing headers", "InvalidTaskError", headers={}),
        new("absurd ETA", "eta", headers=None),
        new("deeply nested JSON", "SerializationError", body=b"[" * 100_000 + b"]" * 100_000),
        new("expired", "expired", headers=None),
    ]
    for poison in poisons:
        if poison.name == "unknown task":
            poison.headers = task_headers(poison.task_id, name="tasks.does_not_exist")
        elif poison.name == "absurd ETA":
            poison.headers = task_headers(poison.task_id, eta="9999-12-31T23:59:59+00:00")
        elif poison.name == "expired":
            poison.headers = task_headers(poison.task_id, expires="2001-01-01T00:00:00+00:00")
    if kind == "redis":
        poisons.append(new("bad base64", "invalid envelope"))
        garbage = new("envelope not JSON", "invalid envelope", named=False)
        garbage.raw = b"\x00{not json at all " + garbage.task_id.encode()
        poisons.append(garbage)
    if kind == "sqlite":
        poisons.append(new("headers column not JSON", "invalid envelope", raw=b"{not json"))
    return poisons


def _dlq_list(directory: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "celeriac", "-A", "tasks", "dlq", "list", "--limit", "1000"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_poison_messages_are_dead_lettered_and_hurt_nothing_else(
    broker_env: str, ledger: Ledger, tasks_dir: Path, run_worker: RunWorker
) -> None:
    tasks = import_tasks(tasks_dir)
    queue = tasks.app.conf.task_default_queue
    tasks.app.broker.declare(queue)
    url = os.environ.get("TEST_BROKER_URL")
    poisons = _poisons(broker_env, tasks_dir)
    worker = run_worker("-c", "2")
    good = size(1000, 1000)
    suicide = tasks.suicide.delay()
    chunk = good // (len(poisons) + 1)
    for poison in poisons:
        publish_work(tasks, ledger, chunk, ms=5)
        inject(broker_env, poison, queue=queue, url=url, directory=tasks_dir)
    publish_work(tasks, ledger, good - chunk * len(poisons), ms=5)

    report = settle(ledger, timeout=120)
    if report.lost or report.phantoms:
        fail_report("good tasks among poison", report)
    expected = [p for p in poisons if p.dead_lettered]
    broker = tasks.app.broker

    def dead_ids() -> dict[str, str]:
        found = {}
        for letter in broker.list_dead_letters(limit=1000):
            headers = letter.message.headers if isinstance(letter.message.headers, dict) else {}
            task_id = headers.get("id") or letter.message.properties.get("correlation_id")
            if task_id is None:  # an unreadable envelope: find the id in its bytes
                task_id = next(
                    (p.task_id for p in poisons if p.task_id.encode() in letter.message.body), None
                )
            found[str(task_id)] = letter.reason
        return found

    wanted = {p.task_id for p in expected} | {suicide.id}
    wait_for(lambda: wanted <= set(dead_ids()), timeout=60, what="every poison dead-lettered")
    reasons = dead_ids()
    listing = _dlq_list(tasks_dir)
    log = worker.output()
    problems = []
    for poison in [*poisons, Poison("kills its process", suicide.id, "WorkerLostError")]:
        lines = [
            line
            for line in log.splitlines()
            if (poison.task_id in line or not poison.named)
            and re.search(poison.reason, line, re.IGNORECASE)
        ]
        if not lines:
            problems.append(f"{poison.name}: no log line with its id and {poison.reason!r}")
        elif poison.dead_lettered and poison.named:
            moved = [line for line in lines if "dead letters" in line]
            if len(moved) != 1:
                problems.append(f"{poison.name}: {len(moved)} dead-letter log lines, not 1")
        if not poison.dead_lettered:
            if poison.task_id in reasons:
                problems.append(f"{poison.name}: dead-lettered, expected it revoked")
            continue
        reason = reasons.get(poison.task_id, "")
        if not re.search(poison.reason, reason, re.IGNORECASE):
            problems.append(f"{poison.name}: dead letter reason {reason!r}")
        if reason and reason[:40] not in listing:
            problems.append(f"{poison.name}: not in `celeriac dlq list`")
        print(f"{broker_env} {poison.name}: {reason[:100]}")
    assert not (tasks_dir / "pickle-ran").exists(), "the pickle payload ran"
    assert worker.process.poll() is None, "the worker died"
    wait_for(lambda: len(worker.children()) == 2, timeout=10, what="both children back")
    assert not problems, "\n".join(problems)
    print(f"poison on {broker_env}: {report.summary()} poisons={len(poisons) + 1}")
