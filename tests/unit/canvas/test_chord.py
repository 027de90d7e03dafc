"""Chords: `|` building, part counting, and what sending one publishes (spec §1.10)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from celeriac import chain, chord, group
from celeriac.canvas import _chain, _chord
from celeriac.exceptions import ImproperlyConfigured
from tests.unit.canvas.helpers import add, sent, tsum

if TYPE_CHECKING:
    from celeriac import Celeriac


def test_a_group_piped_into_a_task_is_a_chord(app: Celeriac) -> None:
    header = group(add(app).s(1, 1), add(app).s(2, 2))
    made = header | tsum(app).s()
    assert isinstance(made, _chord)
    assert made.header.tasks == header.tasks
    assert made.body == tsum(app).s()


def test_a_chord_piped_into_a_task_chains_it_after_the_body(app: Celeriac) -> None:
    made = chord([add(app).s(1, 1)], tsum(app).s()) | add(app).s(5)
    assert isinstance(made, _chord)
    assert isinstance(made.body, _chain)
    assert made.body.tasks == [tsum(app).s(), add(app).s(5)]


def test_a_chord_counts_its_body_and_a_chain_its_last_reporting_step(app: Celeriac) -> None:
    two = group(add(app).s(1), add(app).s(2))
    assert chord([add(app).s(1)], two)._part_count() == 2
    assert chain(add(app).s(1), two)._part_count() == 2
    assert chain(two, add(app).s(1))._part_count() == 1
    assert group()._part_count() == 0


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
