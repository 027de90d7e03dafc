"""Hostile messages written straight into a real Redis queue: a real worker dead-letters
each one once, with its reason and one log line (no traceback), and goes on running
other tasks.

Checks docs/reliability.md, "Bad input never loops".
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis

from tests.helpers import wait_for
from tests.integration.conftest import import_tasks, write_tasks
from tests.integration.worker_tasks import SOURCE

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import RunWorker

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def envelope(headers: dict[str, Any], body: bytes, queue: str) -> bytes:
    """A kombu JSON envelope as any producer could write it (json allows huge ints)."""
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


# Stands for a deeply nested value in what `envelope` writes (json.dumps cannot).
NESTED = "__nested__"


def nested(depth: int) -> bytes:
    """An object nested `depth` deep, as JSON."""
    return b'{"a":' * depth + b"1" + b"}" * depth


def with_nested(data: bytes, depth: int) -> bytes:
    return data.replace(json.dumps(NESTED).encode(), nested(depth))


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_each_hostile_message_is_dead_lettered_once_and_work_goes_on(
    broker_env: str, tasks_dir: Path, run_worker: RunWorker
) -> None:
    write_tasks(tasks_dir, SOURCE)
    tasks = import_tasks(tasks_dir)
    app = tasks.app
    queue = app.conf.task_default_queue
    broker = app.broker
    broker.declare(queue)
    key = broker._keys.list_key(queue, None)
    client = redis.Redis.from_url(broker_env_url(app))

    def headers(task_id: str, **extra: Any) -> dict[str, Any]:
        return {"lang": "py", "task": "tasks.where", "id": task_id, **extra}

    plain = json.dumps([[], {}, {}]).encode()
    hostile = {
        # An integer no float can hold: OverflowError in the codec.
        "huge-timelimit": envelope(
            headers("huge-timelimit", timelimit=[10**400, None]), plain, queue
        ),
        # Arguments nested ~1,000 deep (no list): formatting the error recurses deeply.
        "deep-args": envelope(
            headers("deep-args"), with_nested(json.dumps([NESTED, {}, {}]).encode(), 995), queue
        ),
        # Headers nested ~1,000 deep.
        "deep-headers": with_nested(envelope(headers("deep-headers", x=NESTED), plain, queue), 995),
        # Headers over task_max_message_size (1 MiB by default).
        "fat-headers": envelope(headers("fat-headers", x="a" * (1024 * 1024 + 1)), plain, queue),
    }
    client.lpush(key, *hostile.values(), b"{not json at all")
    try:
        worker = run_worker("-P", "solo")
        good = app.send_task("tasks.where", queue=queue)
        assert good.get(timeout=60)["pid"] == worker.pid

        def letters() -> list[Any]:
            return list(broker.list_dead_letters(limit=100))

        wait_for(lambda: len(letters()) >= 5, timeout=60, what="five dead letters")
        found = letters()
        assert len(found) == 5, [letter.reason for letter in found]
        reasons = {
            str(letter.message.headers.get("id", "envelope")): letter.reason for letter in found
        }
        assert reasons.keys() == {*hostile, "envelope"}, reasons
        assert "time limit must be a number of seconds" in reasons["huge-timelimit"]
        assert reasons["deep-args"].startswith(("InvalidTaskError", "RecursionError"))
        assert "nested more than" in reasons["deep-headers"]
        assert reasons["fat-headers"].startswith("MessageTooLarge: message headers")
        # Kept as metadata: the 1 MiB header value is dropped, and named.
        (fat,) = [one for one in found if one.message.headers.get("id") == "fat-headers"]
        assert fat.message.headers["x-celeriac-dropped-headers"] == ["x"]
        assert fat.message.headers["task"] == "tasks.where"
        assert reasons["envelope"].startswith("invalid envelope")

        # Still running other tasks, after all of them.
        again = app.send_task("tasks.where", queue=queue)
        assert again.get(timeout=60)["pid"] == worker.pid
        assert worker.process.poll() is None
        output = worker.output()
        assert "Traceback" not in output, output[-3000:]
        for task_id in hostile:
            assert output.count(f"[{task_id}] rejected, moved to dead letters") == 1
        assert broker.size(queue) == 0
        assert len(letters()) == 5
    finally:
        client.close()
        app.close()


def broker_env_url(app: Any) -> str:
    return str(app.conf.broker_url)
