"""The delay ladder's arithmetic and routing (brokers/amqp/delay.py), no network.

The topic matching RabbitMQ does is simulated here with a small matcher, so that the
routing of every level can be checked exhaustively without a server.
"""

from __future__ import annotations

import pytest

from celeriac.brokers.amqp.delay import LEVELS, UNIT, UNIT_MS, DelayLayout, units_for
from celeriac.exceptions import PublishError


def topic_match(pattern: str, key: str) -> bool:
    """AMQP topic matching: `*` is one word, `#` zero or more."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        if not k:
            return False
        return (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


class Ladder:
    """Simulates the declared ladder of some queues: where does a message go?"""

    def __init__(self, layout: DelayLayout, queues: list[str]) -> None:
        self.layout = layout
        # exchange -> [(key, ("exchange"|"queue", name))]
        self.bindings: dict[str, list[tuple[str, tuple[str, str]]]] = {}
        self.args: dict[str, dict[str, object]] = {}
        for destination, source, key in layout.exchange_bindings():
            self.bindings.setdefault(source, []).append((key, ("exchange", destination)))
        for queue in queues:
            for name, arguments, exchange, key in layout.queue_declarations(queue):
                self.bindings.setdefault(exchange, []).append((key, ("queue", name)))
                self.args[name] = arguments

    def route(self, exchange: str, key: str) -> set[str]:
        if exchange == "":
            return {key}
        found: set[str] = set()
        for pattern, (kind, name) in self.bindings.get(exchange, []):
            if topic_match(pattern, key):
                found |= self.route(name, key) if kind == "exchange" else {name}
        return found

    def travel(self, exchange: str, key: str) -> tuple[str, int]:
        """Follow dead-lettering until the message reaches a non-ladder queue;
        return that queue and the total TTL spent, in ms."""
        spent = 0
        while True:
            [queue] = self.route(exchange, key)
            if queue not in self.args:
                return queue, spent
            args = self.args[queue]
            spent += int(args["x-message-ttl"])  # type: ignore[call-overload]
            exchange = str(args["x-dead-letter-exchange"])
            key = str(args.get("x-dead-letter-routing-key", key))


@pytest.mark.parametrize("seconds", [0.001, 0.1, 0.35, 1.0, 7.3, 59.99, 3600, 86400 * 400])
def test_units_round_up_so_a_message_is_never_early(seconds: float) -> None:
    units = units_for(seconds)
    assert units * UNIT >= seconds - 1e-9
    assert units * UNIT - seconds < UNIT


def test_whole_tenths_are_not_rounded_up_by_float_noise() -> None:
    assert units_for(1.0) == 10
    assert units_for(0.3) == 3


def test_a_delay_beyond_the_ladder_is_refused() -> None:
    with pytest.raises(PublishError, match="years"):
        units_for(2**LEVELS * UNIT)


def test_level_ttls_double_and_stay_under_rabbitmqs_ten_year_cap() -> None:
    layout = DelayLayout("p")
    args = {name: a for name, a, _, _ in layout.queue_declarations("q")}
    ttls = [args[layout.level_queue("q", k)]["x-message-ttl"] for k in range(LEVELS)]
    assert ttls == [UNIT_MS * 2**k for k in range(LEVELS)]
    assert max(ttls) <= 315_360_000_000


@pytest.mark.parametrize("units", [1, 2, 3, 10, 255, 256, 1000, 36000, 2**31, 2**32 - 1])
def test_every_route_lands_in_its_queue_after_exactly_its_delay(units: int) -> None:
    layout = DelayLayout("celeriac.delay")
    ladder = Ladder(layout, ["celery", "other"])
    route = layout.route("celery", units * UNIT)
    assert route.units == units
    assert ladder.travel(route.exchange, route.routing_key) == ("celery", units * UNIT_MS)


def test_dotted_queue_names_do_not_leak_into_each_other() -> None:
    layout = DelayLayout("d")
    names = ["a.b", "x.a.b", "a", "b"]
    ladder = Ladder(layout, names)
    for queue in names:
        for units in (1, 2, 5, 64):
            route = layout.route(queue, units * UNIT)
            assert ladder.travel(route.exchange, route.routing_key) == (queue, units * UNIT_MS)


def test_target_of_reads_the_queue_back_from_a_routing_key() -> None:
    layout = DelayLayout()
    route = layout.route("my.queue", 12.3)
    assert layout.target_of(route.routing_key) == "my.queue"
    assert layout.target_of("celery") is None


@pytest.mark.parametrize("queue", ["a.*.b", "#", "x" * 200])
def test_queue_names_the_ladder_cannot_route_are_refused(queue: str) -> None:
    with pytest.raises(PublishError, match="cannot delay"):
        DelayLayout().check_queue(queue)
