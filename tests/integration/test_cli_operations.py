"""The operator's commands against a running celeriac worker on Redis: `call`, `result`,
`purge`, `events --dump`, `control enable_events`, `list bindings`, `report`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.interop_redis import import_module

if TYPE_CHECKING:
    from tests.integration.conftest import RunWorker
    from tests.integration.mixed_fleet import Fleet

pytestmark = [
    pytest.mark.integration,
    pytest.mark.redis,
    pytest.mark.parametrize("fleet", ["redis"], indirect=True),
]


def celeriac(
    fleet: Fleet, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celeriac", "-A", "cproj", *args],
        cwd=fleet.directory,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_call_waits_and_result_prints_values_and_tracebacks(
    fleet: Fleet, run_worker: RunWorker
) -> None:
    run_worker("-c", "1", "-n", f"{fleet.queue}@test")
    waited = celeriac(fleet, "call", "rc.add", "--args", "[2, 3]", "--wait", "20")
    assert (waited.returncode, waited.stdout) == (0, "5\n"), waited.stderr

    sent = celeriac(fleet, "call", "rc.add", "--args", "[40]", "--kwargs", '{"y": 2}')
    task_id = sent.stdout.strip()
    shown = celeriac(fleet, "result", task_id, "--timeout", "20")
    assert (shown.returncode, shown.stdout) == (0, "42\n"), shown.stderr

    failing = celeriac(fleet, "call", "rc.fail", "--args", '["boom"]').stdout.strip()
    plain = celeriac(fleet, "result", failing, "--timeout", "20")
    assert plain.returncode == 70
    assert plain.stdout.startswith("FAILURE: ValueError('boom')")
    traced = celeriac(fleet, "result", failing, "--traceback", "--timeout", "20")
    assert traced.returncode == 70
    assert "Traceback" in traced.stdout
    assert "ValueError: boom" in traced.stdout


def test_call_refuses_arguments_that_are_not_json(fleet: Fleet) -> None:
    bad = celeriac(fleet, "call", "rc.add", "--args", "[2,")
    assert bad.returncode == 64
    assert "--args is not JSON" in bad.stderr


def test_purge_asks_first_and_deletes_waiting_tasks(fleet: Fleet) -> None:
    for _ in range(3):
        assert celeriac(fleet, "call", "rc.add", "--args", "[1, 1]").returncode == 0
    declined = celeriac(fleet, "purge", stdin="n\n")
    assert declined.returncode == 1
    assert f"remove all tasks from queue {fleet.queue}" in declined.stdout
    excluded = celeriac(fleet, "purge", "-f", "-X", fleet.queue)
    assert excluded.returncode == 64
    confirmed = celeriac(fleet, "purge", "-Q", fleet.queue, stdin="y\n")
    assert confirmed.returncode == 0
    assert "Purged 3 messages from 1 known task queue." in confirmed.stdout
    again = celeriac(fleet, "purge", "-f")
    assert "No messages purged from 1 queue." in again.stdout


def test_events_dump_shows_a_task_after_enable_events(fleet: Fleet, run_worker: RunWorker) -> None:
    node = f"{fleet.queue}@test"
    run_worker("-c", "1", "-n", node)
    enabled = celeriac(fleet, "control", "enable_events", "-d", node, "--json")
    assert json.loads(enabled.stdout) == {node: {"ok": "task events enabled"}}
    dump = subprocess.Popen(
        [sys.executable, "-m", "celeriac", "-A", "cproj", "events", "--dump", "--json",
         "--timeout", "30"],
        cwd=fleet.directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert dump.stdout is not None
        # The receiver wakes the workers: a heartbeat comes first.
        lines.append(dump.stdout.readline())
        first = json.loads(lines[0])
        assert first["type"] in ("worker-heartbeat", "worker-online")
        assert first["hostname"] == node
        cproj = import_module(fleet.directory, "cproj")
        try:
            done = cproj.add.delay(1, 2)
            assert done.get(timeout=20) == 3
        finally:
            cproj.app.close()
        # Read until the task's last event and a heartbeat have come (or the dump's own
        # end, at its timeout).
        seen: set[str] = {first["type"]}
        while line := dump.stdout.readline():
            lines.append(line)
            event = json.loads(line)
            if event.get("uuid") == done.id or event["type"] == "worker-heartbeat":
                seen.add(event["type"])
            if {"task-succeeded", "worker-heartbeat"} <= seen:
                break
    finally:
        if dump.poll() is None:
            dump.kill()
        _, err = dump.communicate(timeout=10)
    events = [json.loads(line) for line in lines]
    mine = [e["type"] for e in events if e.get("uuid") == done.id]
    assert mine == ["task-received", "task-started", "task-succeeded"], err
    succeeded = next(e for e in events if e["type"] == "task-succeeded")
    assert succeeded["result"] == "3"
    assert succeeded["hostname"] == node
    assert succeeded["runtime"] >= 0
    received = next(e for e in events if e["type"] == "task-received")
    assert (received["name"], received["args"], received["kwargs"]) == ("rc.add", "(1, 2)", "{}")
    assert (received["root_id"], received["retries"]) == (done.id, 0)
    for event in events:
        for field in ("hostname", "clock", "utcoffset", "pid", "timestamp", "type"):
            assert field in event, (field, event)
    beats = [e for e in events if e["type"] == "worker-heartbeat"]
    assert beats
    for field in ("freq", "active", "processed", "loadavg", "sw_ident", "sw_ver", "sw_sys"):
        assert field in beats[0], field


def test_list_bindings_and_report(fleet: Fleet) -> None:
    listed = celeriac(fleet, "list", "bindings")
    queue = fleet.queue
    assert listed.stdout.split() == ["Queue", "Exchange", "Routing", "Key", queue, queue, queue]
    report = celeriac(fleet, "report")
    assert report.returncode == 0
    assert "software -> celeriac:" in report.stdout
    assert f"task_default_queue: {queue!r}" in report.stdout


def test_a_producer_sends_task_sent_when_asked(fleet: Fleet) -> None:
    cproj = import_module(fleet.directory, "cproj")
    cproj.app.conf.task_send_sent_event = True
    received: list[dict[str, Any]] = []
    receiver = cproj.app.events.Receiver(handlers={"*": received.append}, routing_key="task.#")
    listener = threading.Thread(target=receiver.capture, kwargs={"limit": 1, "timeout": 20})
    listener.start()
    try:
        assert receiver.ready.wait(20)
        sent = cproj.add.apply_async((1, 2), countdown=60)
        listener.join(30)
    finally:
        receiver.should_stop = True
        listener.join(30)
        cproj.app.close()
    [event] = received
    assert event["type"] == "task-sent"
    assert (event["uuid"], event["name"], event["queue"]) == (sent.id, "rc.add", fleet.queue)
    assert event["args"] == "(1, 2)"
    assert event["eta"] is not None
