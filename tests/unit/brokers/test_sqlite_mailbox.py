"""The SQLite broadcast channel: commands, replies and events as rows of one table."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from celeriac.brokers.mailbox import pack, unpack
from celeriac.brokers.sqlite_mailbox import SQLiteMailbox, _matches

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ACCEPT = frozenset({"application/json"})


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broker.db'}"


@pytest.fixture
def pair(url: str) -> Iterator[tuple[SQLiteMailbox, SQLiteMailbox]]:
    client, worker = SQLiteMailbox(url), SQLiteMailbox(url)
    yield client, worker
    client.close()
    worker.close()


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("#", "task.multi", True),
        ("worker.#", "worker.heartbeat", True),
        ("worker.#", "task.multi", False),
        ("task.*", "task.succeeded", True),
        ("task.*", "task.succeeded.x", False),
    ],
)
def test_topic_patterns_match_like_rabbitmq(pattern: str, key: str, expected: bool) -> None:
    assert _matches(pattern, key) is expected


def test_a_command_reaches_a_listener_and_its_reply_comes_back(
    pair: tuple[SQLiteMailbox, SQLiteMailbox],
) -> None:
    client, worker = pair
    client.publish_command(pack({"method": "before"}, headers={}))
    worker.listen("w1@host")
    client.open_replies("oid-1")
    client.publish_command(pack({"method": "ping"}, headers={"clock": 1}))
    commands = worker.receive_commands(timeout=1.0)
    # Sent before it listened: not for it, as with pub/sub.
    assert [unpack(m, accept=ACCEPT)["method"] for m in commands] == ["ping"]
    worker.reply("reply.celery.pidbox", "oid-1", pack({"w1@host": "pong"}, headers={"ticket": "t"}))
    replies = client.receive_replies("oid-1", timeout=1.0)
    assert [unpack(m, accept=ACCEPT) for m in replies] == [{"w1@host": "pong"}]
    assert replies[0].headers == {"ticket": "t"}
    client.close_replies("oid-1")
    assert client.receive_replies("oid-1", timeout=0.05) == []


def test_events_are_filtered_by_the_listeners_routing_key(
    pair: tuple[SQLiteMailbox, SQLiteMailbox],
) -> None:
    sender, monitor = pair
    monitor.listen_events("worker.#")
    sender.publish_event("task.multi", pack([{"type": "task-started"}], headers={}))
    sender.publish_event("worker.heartbeat", pack({"type": "worker-heartbeat"}, headers={}))
    events = monitor.receive_events(timeout=1.0)
    assert [unpack(m, accept=ACCEPT) for m in events] == [{"type": "worker-heartbeat"}]
