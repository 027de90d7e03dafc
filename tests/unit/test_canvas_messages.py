"""What sending a canvas publishes (spec §1.6-1.10), read back from the memory broker.

No worker runs here: each test sends a canvas, takes every message off the queue and
decodes it as a worker would, then checks headers and `embed` against the spec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from celeriac import chain, chord, group, signature
from celeriac.brokers.memory import MemoryBroker
from celeriac.exceptions import ImproperlyConfigured
from celeriac.protocol.codec import TaskCall, decode_task
from celeriac.testing import memory_app

if TYPE_CHECKING:
    from celeriac import Celeriac


@pytest.fixture
def app() -> Celeriac:
    app = memory_app("tests")

    @app.task(name="tests.add")
    def add(x: int, y: int = 1) -> int:
        return x + y

    @app.task(name="tests.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="tests.on_error")
    def on_error(request: Any, exc: Exception, traceback: str) -> None:
        pass

    return app


def add(app: Celeriac) -> Any:
    return app.tasks["tests.add"]


def tsum(app: Celeriac) -> Any:
    return app.tasks["tests.tsum"]


def sent(app: Celeriac, queue: str = "celery") -> list[TaskCall]:
    """Take every message off `queue` and decode it as a worker would."""
    broker = app.broker
    deliveries = broker.receive([queue], limit=10_000, timeout=0)
    for delivery in deliveries:
        broker.ack(delivery)
    return [decode_task(d.message, accept=frozenset({"application/json"})) for d in deliveries]


@pytest.fixture
def batches(app: Celeriac) -> list[int]:
    """Sizes of the `publish_many` round trips made (a spy on the memory broker)."""
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    calls: list[int] = []
    original = broker.publish_many

    def counting(items: Any) -> None:
        calls.append(len(items))
        original(items)

    broker.publish_many = counting  # type: ignore[method-assign]
    return calls


# -- chains ---------------------------------------------------------------------------


def test_a_chain_sends_its_first_task_with_the_rest_reversed(app: Celeriac) -> None:
    result = chain(add(app).s(2, 2), add(app).s(4), add(app).si(1, 1).set(queue="other"))()
    [first] = sent(app)
    assert (first.name, first.args) == ("tests.add", [2, 2])
    assert first.chain is not None
    assert [step["args"] for step in first.chain] == [[1, 1], [4]]
    assert [step["immutable"] for step in first.chain] == [True, False]
    assert first.chain[0]["options"]["queue"] == "other"
    # Frozen steps carry the sender's reply queue, as Celery's do (spec §1.4).
    assert {step["options"]["reply_to"] for step in first.chain} == {first.reply_to}
    assert first.reply_to == app.thread_oid
    # Every step is frozen: the ids in the message are the ids of the results.
    assert first.chain[0]["options"]["task_id"] == result.id
    assert first.chain[1]["options"]["task_id"] == result.parent.id
    assert first.id == result.parent.parent.id
    assert first.root_id == first.id
    assert first.parent_id is None
    assert first.group is None
    assert sent(app, "other") == []


def test_a_chain_with_arguments_passes_them_to_its_first_step(app: Celeriac) -> None:
    chain(add(app).s(2), add(app).s(4))(10)
    [first] = sent(app)
    assert first.args == [10, 2]


def test_a_chains_link_goes_to_its_last_step_and_link_error_to_every_step(
    app: Celeriac,
) -> None:
    callback, errback = tsum(app).s(), app.tasks["tests.on_error"].s()
    chain(add(app).s(1, 1), add(app).s(2)).apply_async(link=callback, link_error=errback)
    [first] = sent(app)
    assert first.callbacks is None
    assert first.errbacks == [dict(errback)]
    assert first.chain is not None
    [last] = first.chain
    assert last["options"]["link"] == [callback]
    assert last["options"]["link_error"] == [errback]


def test_a_group_in_a_chain_becomes_a_chord_with_the_next_step(app: Celeriac) -> None:
    chain(add(app).s(1, 1), group(add(app).s(1), add(app).s(2)), tsum(app).s())()
    [first] = sent(app)
    assert first.chain is not None
    [upgraded] = first.chain
    assert upgraded["task"] == "celery.chord"
    assert upgraded["subtask_type"] == "chord"
    header = upgraded["kwargs"]["header"]
    assert header["subtask_type"] == "group"
    body = upgraded["kwargs"]["body"]
    assert body["task"] == "tests.tsum"
    # Header members already carry the body they report to (spec §1.8).
    for index, member in enumerate(header["kwargs"]["tasks"]):
        assert member["options"]["chord"]["options"]["task_id"] == body["options"]["task_id"]
        assert member["options"]["group_index"] == index
        assert member["options"]["group_id"] == header["options"]["task_id"]


# -- groups ---------------------------------------------------------------------------


def test_a_group_publishes_every_member_in_one_round_trip(
    app: Celeriac, batches: list[int]
) -> None:
    result = group(add(app).s(i, i) for i in range(5))()
    assert batches == [5]
    messages = sent(app)
    assert [m.id for m in messages] == [r.id for r in result.results]
    assert [m.args for m in messages] == [[i, i] for i in range(5)]
    assert {m.group for m in messages} == {result.id}
    assert [m.group_index for m in messages] == [0, 1, 2, 3, 4]
    assert all(m.root_id == m.id and m.parent_id is None for m in messages)


def test_a_group_with_arguments_prepends_them_to_every_member(app: Celeriac) -> None:
    group(add(app).s(1), add(app).si(5, 5))(7)
    assert [m.args for m in sent(app)] == [[7, 1], [5, 5]]


def test_nested_groups_are_flattened_into_one(app: Celeriac) -> None:
    result = group(add(app).s(1, 1), group(add(app).s(2, 2), add(app).s(3, 3)))()
    messages = sent(app)
    assert len(result.results) == 3
    assert {m.group for m in messages} == {result.id}
    assert [m.group_index for m in messages] == [0, 1, 2]


def test_a_chain_in_a_group_puts_only_its_last_step_in_the_group(app: Celeriac) -> None:
    result = group(chain(add(app).s(1, 1), add(app).s(2)), add(app).s(3, 3))()
    first, other = sent(app)
    assert first.group is None
    assert first.chain is not None
    [last] = first.chain
    assert last["options"]["group_id"] == result.id
    assert last["options"]["group_index"] == 0
    assert (other.group, other.group_index) == (result.id, 1)
    assert [r.id for r in result.results] == [last["options"]["task_id"], other.id]


def test_a_group_id_can_be_chosen(app: Celeriac) -> None:
    result = group(add(app).s(1, 1)).apply_async(task_id="my-group")
    assert result.id == "my-group"
    assert sent(app)[0].group == "my-group"


# -- chords ---------------------------------------------------------------------------


def test_a_chord_writes_its_size_then_publishes_its_header_in_one_round_trip(
    app: Celeriac, batches: list[int]
) -> None:
    order: list[str] = []
    backend = app.backend
    original = backend.set_chord_size

    def recording(group_id: str, size: int) -> None:
        order.append(f"size {size}")
        original(group_id, size)

    backend.set_chord_size = recording  # type: ignore[method-assign]
    broker = app.broker
    publish_many = broker.publish_many

    def publishing(items: Any) -> None:
        order.append(f"publish {len(items)}")
        publish_many(items)

    broker.publish_many = publishing  # type: ignore[method-assign]
    result = chord([add(app).s(i, i) for i in range(3)], tsum(app).s())()
    assert order == ["size 3", "publish 3"]
    messages = sent(app)
    gid = messages[0].group
    assert gid is not None
    assert result.parent.id == gid
    assert [m.group_index for m in messages] == [0, 1, 2]
    for message in messages:
        assert message.chord is not None
        assert message.chord["task"] == "tests.tsum"
        assert message.chord["options"]["task_id"] == result.id
    # The size really is 3: the backend joins at the third part, not before.
    for index, message in enumerate(messages[:2]):
        assert (
            backend.chord_part_return(
                gid, index=index, task_id=message.id, status="SUCCESS", result=index
            )
            is None
        )
    parts = backend.chord_part_return(
        gid, index=2, task_id=messages[2].id, status="SUCCESS", result=2
    )
    assert parts is not None
    assert [p.result for p in parts] == [0, 1, 2]


def test_both_chord_spellings_send_the_same_thing(app: Celeriac) -> None:
    chord([add(app).s(1, 1), add(app).s(2, 2)])(tsum(app).s())
    called = sent(app)
    chord([add(app).s(1, 1), add(app).s(2, 2)], tsum(app).s())()
    built = sent(app)
    assert [(m.name, m.args) for m in called] == [(m.name, m.args) for m in built]
    assert [m.chord["task"] for m in called if m.chord] == ["tests.tsum"] * 2


def test_a_chord_with_an_empty_header_sends_its_body_with_an_empty_list(
    app: Celeriac,
) -> None:
    result = chord([], tsum(app).s())()
    [body] = sent(app)
    assert (body.id, body.name, body.args) == (result.id, "tests.tsum", [[]])


def test_a_chord_whose_header_holds_a_chain_ending_in_a_group_counts_each_part(
    app: Celeriac,
) -> None:
    result = chord(
        [chain(add(app).s(1, 1), group(add(app).s(1), add(app).s(2))), add(app).s(5, 5)],
        tsum(app).s(),
    )()
    first, plain = sent(app)
    assert first.chain is not None
    [tail] = first.chain
    members = tail["kwargs"]["tasks"]
    assert [m["options"]["group_id"] for m in members] == [result.parent.id] * 2
    assert [m["options"]["group_index"] for m in members] == [0, 1]
    assert (plain.group, plain.group_index) == (result.parent.id, 2)
    backend = app.backend
    parts = [
        backend.chord_part_return(
            result.parent.id, index=i, task_id=f"t{i}", status="SUCCESS", result=i
        )
        for i in range(3)
    ]
    assert parts[:2] == [None, None]
    assert parts[2] is not None


def test_options_given_to_a_chord_apply_to_its_header_and_body(app: Celeriac) -> None:
    callback = tsum(app).s()
    chord([add(app).s(1, 1), add(app).s(2, 2)], tsum(app).s()).apply_async(
        queue="elsewhere", priority=7, link=callback
    )
    assert sent(app) == []
    messages = sent(app, "elsewhere")
    assert [m.priority for m in messages] == [7, 7]
    # The callback belongs to the body only, not to each header task.
    assert [m.callbacks for m in messages] == [None, None]
    body = messages[0].chord
    assert body is not None
    assert (body["options"]["queue"], body["options"]["priority"]) == ("elsewhere", 7)
    assert body["options"]["link"] == [callback]


def test_a_chord_needs_a_body(app: Celeriac) -> None:
    with pytest.raises(ImproperlyConfigured, match="needs a body"):
        chord([add(app).s(1, 1)]).apply_async()


# -- map, starmap, chunks, links --------------------------------------------------------


def test_map_and_starmap_are_one_message_to_the_builtin(app: Celeriac) -> None:
    add(app).map([1, 2]).delay()
    add(app).starmap([(1, 2)]).delay()
    mapped, starred = sent(app)
    assert (mapped.name, mapped.args) == ("celery.map", [])
    assert mapped.kwargs == {"task": dict(add(app).s()), "it": [1, 2]}
    assert (starred.name, starred.kwargs["it"]) == ("celery.starmap", [[1, 2]])


def test_chunks_are_a_group_of_starmaps(app: Celeriac, batches: list[int]) -> None:
    result = add(app).chunks([(i, i) for i in range(5)], 2).apply_async()
    assert batches == [3]
    messages = sent(app)
    assert [m.name for m in messages] == ["celery.starmap"] * 3
    assert [m.kwargs["it"] for m in messages] == [[[0, 0], [1, 1]], [[2, 2], [3, 3]], [[4, 4]]]
    assert {m.group for m in messages} == {result.id}


def test_link_and_link_error_go_to_embed_callbacks_and_errbacks(app: Celeriac) -> None:
    callback, errback = tsum(app).s(), app.tasks["tests.on_error"].s()
    signature("tests.add", (1, 1), app=app).apply_async(link=callback, link_error=[errback])
    [message] = sent(app)
    assert message.callbacks == [dict(callback)]
    assert message.errbacks == [dict(errback)]


def test_delay_and_apply_async_merge_arguments_and_options(app: Celeriac) -> None:
    sig = add(app).s(y=2).set(queue="other")
    sig.delay(5)
    sig.apply_async((6,), {"y": 3}, priority=4)
    # The broker serves higher priorities first.
    second, first = sent(app, "other")
    assert (first.args, first.kwargs) == ([5], {"y": 2})
    assert (second.args, second.kwargs, second.priority) == ([6], {"y": 3}, 4)


def test_a_signature_of_an_unknown_task_is_sent_by_name(app: Celeriac) -> None:
    signature("elsewhere.task", (1,), app=app).delay(2)
    [message] = sent(app)
    assert (message.name, message.args) == ("elsewhere.task", [2, 1])
