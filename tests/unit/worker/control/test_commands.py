"""Remote control commands as a worker answers them (worker/control.py), over an
in-memory mailbox: addressing, reply shapes and tickets, errors, changes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from celeriac.brokers.mailbox import Mailbox, pack, unpack
from celeriac.worker.control import ControlServer
from celeriac.worker.options import WorkerOptions
from celeriac.worker.pools.prefork.autoscale import PoolSize

if TYPE_CHECKING:
    from celeriac import Celeriac
    from celeriac.protocol.message import Message

ACCEPT = frozenset({"application/json"})


class MemoryMailbox(Mailbox):
    """Records replies; commands are handed to the server directly."""

    def __init__(self) -> None:
        super().__init__("memory://")
        self.replies: list[tuple[str, str, Message]] = []

    def open_replies(self, oid: str) -> None: ...
    def publish_command(self, message: Message) -> None: ...
    def receive_replies(self, oid: str, *, timeout: float) -> list[Message]:
        return []

    def close_replies(self, oid: str) -> None: ...
    def listen(self, node: str) -> None: ...
    def receive_commands(self, *, timeout: float) -> list[Message]:
        return []

    def reply(self, exchange: str, routing_key: str, message: Message) -> None:
        self.replies.append((exchange, routing_key, message))

    def publish_event(self, routing_key: str, message: Message) -> None: ...
    def listen_events(self, routing_key: str = "#") -> None: ...
    def receive_events(self, *, timeout: float) -> list[Message]:
        return []

    def close(self) -> None: ...


class FakePool:
    def __init__(self, size: PoolSize | None = None) -> None:
        self.forwarded: list[tuple[str, dict[str, Any]]] = []
        self.shutdown_requested = False
        self.size = size

    def pool_size(self) -> PoolSize | None:
        return self.size

    def active_requests(self) -> list[dict[str, Any]]:
        return [{"id": "t-1", "name": "tests.add"}]

    def reserved_requests(self) -> list[dict[str, Any]]:
        return [{"id": "t-2", "name": "tests.add"}]

    def processed(self) -> dict[str, int]:
        return {"tests.add": 3}

    def processes(self) -> list[int]:
        return [1234]

    def request_shutdown(self) -> None:
        self.shutdown_requested = True

    def forward_control(self, method: str, arguments: dict[str, Any]) -> None:
        self.forwarded.append((method, arguments))


@pytest.fixture
def server(app: Celeriac) -> ControlServer:
    @app.task(name="tests.add")
    def add(x: int, y: int) -> int:
        return x + y

    options = WorkerOptions.resolve(app, pool="threads", concurrency=2, hostname="w1@host")
    return ControlServer(app, options, FakePool(), MemoryMailbox())


def call(server: ControlServer, method: str, **body: Any) -> Any:
    """Send one command with a reply requested; return the reply, or None if none came."""
    mailbox = server.mailbox
    assert isinstance(mailbox, MemoryMailbox)
    before = len(mailbox.replies)
    message = {
        "method": method,
        "arguments": body.pop("arguments", {}),
        "destination": None,
        "pattern": None,
        "matcher": None,
        "ticket": "tk-1",
        "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "client-oid"},
        **body,
    }
    server.handle_message(pack(message, headers={"clock": 7, "expires": 0}))
    if len(mailbox.replies) == before:
        return None
    exchange, routing_key, reply = mailbox.replies[-1]
    assert (exchange, routing_key) == ("reply.celery.pidbox", "client-oid")
    assert reply.headers["ticket"] == "tk-1"
    return unpack(reply, accept=ACCEPT)


def test_ping_answers_pong_under_the_node_name(server: ControlServer) -> None:
    assert call(server, "ping") == {"w1@host": {"ok": "pong"}}


def test_the_clock_moves_past_the_senders(server: ControlServer) -> None:
    call(server, "ping")
    assert server.clock.value > 7


def test_a_command_for_another_node_is_ignored(server: ControlServer) -> None:
    assert call(server, "ping", destination=["other@host"]) is None
    assert call(server, "ping", destination=["w1@host"]) == {"w1@host": {"ok": "pong"}}


def test_glob_and_pcre_patterns_select_nodes(server: ControlServer) -> None:
    assert call(server, "ping", pattern="w*@host", matcher="glob") is not None
    assert call(server, "ping", pattern="^x", matcher="pcre") is None


def test_an_unknown_command_answers_an_error(server: ControlServer) -> None:
    assert call(server, "no_such_thing") == {"w1@host": {"error": "KeyError('no_such_thing')"}}


def test_inspect_commands_answer_celerys_shapes(server: ControlServer) -> None:
    assert call(server, "active") == {"w1@host": [{"id": "t-1", "name": "tests.add"}]}
    # Other tests' shared tasks may be registered too; Celery's built-ins never are.
    registered = call(server, "registered")["w1@host"]
    assert "tests.add" in registered
    assert not [name for name in registered if name.startswith("celery.")]
    assert call(server, "query_task", arguments={"ids": ["t-2"]}) == {
        "w1@host": {"t-2": ["reserved", {"id": "t-2", "name": "tests.add"}]}
    }
    stats = call(server, "stats")["w1@host"]
    assert stats["total"] == {"tests.add": 3}
    assert stats["pool"]["max-concurrency"] == 2
    assert stats["pool"]["processes"] == [1234]
    assert set(stats["broker"]) >= {"hostname", "port", "transport"}


def test_rate_limit_changes_the_task_and_reaches_the_pool(server: ControlServer) -> None:
    reply = call(server, "rate_limit", arguments={"task_name": "tests.add", "rate_limit": "5/s"})
    assert reply == {"w1@host": {"ok": "new rate limit set successfully"}}
    assert server.app.tasks["tests.add"].rate_limit == "5/s"
    pool = server.state
    assert isinstance(pool, FakePool)
    assert pool.forwarded == [("rate_limit", {"task_name": "tests.add", "rate_limit": "5/s"})]


def test_rate_limit_of_an_unknown_task_is_an_error(server: ControlServer) -> None:
    reply = call(server, "rate_limit", arguments={"task_name": "nope", "rate_limit": "5/s"})
    assert reply == {"w1@host": {"error": "unknown task 'nope'"}}


def test_revoke_records_revoked_in_the_backend(server: ControlServer) -> None:
    reply = call(server, "revoke", arguments={"task_id": "gone-1"})
    assert reply == {"w1@host": {"ok": "tasks {'gone-1'} flagged as revoked"}}
    assert server.app.AsyncResult("gone-1").state == "REVOKED"
    assert call(server, "revoked") == {"w1@host": ["gone-1"]}


def test_shutdown_answers_nothing_and_stops_the_pool(server: ControlServer) -> None:
    assert call(server, "shutdown") is None
    pool = server.state
    assert isinstance(pool, FakePool)
    assert pool.shutdown_requested


def test_pool_resizing_is_refused_loudly(server: ControlServer) -> None:
    reply = call(server, "pool_grow", arguments={"n": 1})
    assert reply == {"w1@host": {"error": "the threads pool cannot change its size at run time"}}


def _prefork_server(app: Celeriac, size: PoolSize) -> ControlServer:
    options = WorkerOptions.resolve(app, pool="prefork", concurrency=2, hostname="w1@host")
    return ControlServer(app, options, FakePool(size), MemoryMailbox())


def test_pool_grow_and_shrink_change_a_prefork_pool_with_celerys_replies(app: Celeriac) -> None:
    size = PoolSize(2)
    server = _prefork_server(app, size)
    assert call(server, "pool_grow", arguments={"n": 2}) == {"w1@host": {"ok": "pool will grow"}}
    assert size.wanted() == 4
    assert call(server, "pool_shrink", arguments={"n": 3}) == {
        "w1@host": {"ok": "pool will shrink"}
    }
    assert size.wanted() == 1
    assert call(server, "stats")["w1@host"]["pool"]["max-concurrency"] == 1


def test_pool_shrink_keeps_one_child(app: Celeriac) -> None:
    server = _prefork_server(app, PoolSize(1))
    reply = call(server, "pool_shrink", arguments={"n": 1})["w1@host"]
    assert "keeps at least one" in reply["error"]


def test_pool_grow_is_refused_with_celerys_words_while_autoscaling(app: Celeriac) -> None:
    server = _prefork_server(app, PoolSize(1, autoscale=(4, 1)))
    assert call(server, "pool_grow", arguments={"n": 1}) == {
        "w1@host": {
            "error": "pool_grow is not supported with autoscale. Adjust autoscale range instead."
        }
    }
    assert call(server, "pool_shrink")["w1@host"]["error"].startswith("pool_shrink is not")


def test_autoscale_changes_max_and_min_and_stats_show_them(app: Celeriac) -> None:
    size = PoolSize(1, autoscale=(4, 1))
    server = _prefork_server(app, size)
    assert call(server, "autoscale", arguments={"max": 6, "min": 2}) == {
        "w1@host": {"ok": "autoscale now max=6 min=2"}
    }
    assert size.wanted() == 2
    autoscaler = call(server, "stats")["w1@host"]["autoscaler"]
    assert (autoscaler["max"], autoscaler["min"]) == (6, 2)


def test_autoscale_without_autoscaling_answers_celerys_error(app: Celeriac) -> None:
    server = _prefork_server(app, PoolSize(2))
    assert call(server, "autoscale", arguments={"max": 6, "min": 2}) == {
        "w1@host": {"error": "ValueError('Autoscale not enabled')"}
    }
    assert "autoscaler" not in call(server, "stats")["w1@host"]


def test_add_and_cancel_consumer_change_the_queues(server: ControlServer) -> None:
    assert call(server, "add_consumer", arguments={"queue": "extra"}) == {
        "w1@host": {"ok": "add consumer extra"}
    }
    assert [q["name"] for q in call(server, "active_queues")["w1@host"]] == ["celery", "extra"]
    assert call(server, "cancel_consumer", arguments={"queue": "extra"}) == {
        "w1@host": {"ok": "no longer consuming from extra"}
    }
    assert call(server, "cancel_consumer", arguments={"queue": "celery"}) == {
        "w1@host": {"error": "'celery' is the last queue this worker consumes"}
    }
