"""Chains: `|` building, freezing, and what sending one publishes (spec §1.8)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeriac import chain, group
from celeriac.canvas import _chain
from tests.unit.canvas.helpers import add, sent, tsum

if TYPE_CHECKING:
    from celeriac import Celeriac


def test_pipes_build_flat_chains(app: Celeriac) -> None:
    a, b, c, d = (add(app).s(n) for n in range(4))
    assert isinstance(a | b, _chain)
    assert (a | b).tasks == [a, b]
    assert ((a | b) | c).tasks == [a, b, c]
    assert (a | (b | c)).tasks == [a, b, c]
    assert ((a | b) | (c | d)).tasks == [a, b, c, d]


def test_a_group_of_one_is_unrolled_in_a_chain(app: Celeriac) -> None:
    made = add(app).s(1, 1) | group(add(app).s(2))
    assert made.tasks == [add(app).s(1, 1), add(app).s(2)]


def test_freezing_a_chain_links_every_result_to_its_parent(app: Celeriac) -> None:
    made = chain(add(app).s(1, 1), add(app).s(2), add(app).s(3))
    result = made.freeze()
    ids = [step.id for step in made.tasks]
    assert all(ids)
    assert result.id == ids[2]
    assert result.parent is not None
    assert result.parent.id == ids[1]
    assert result.parent.parent is not None
    assert result.parent.parent.id == ids[0]
    assert result.parent.parent.parent is None


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
