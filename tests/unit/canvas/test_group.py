"""Groups: freezing, and what sending one publishes (spec §1.9), in one round trip."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeriac import chain, group
from celeriac.canvas import _chain
from tests.unit.canvas.helpers import add, sent

if TYPE_CHECKING:
    from celeriac import Celeriac


def test_freezing_a_group_numbers_members_by_the_chord_parts_they_report(
    app: Celeriac,
) -> None:
    made = group(
        add(app).s(1),
        chain(add(app).s(2), group(add(app).s(3), add(app).s(4))),
        add(app).s(5),
    )
    result = made.freeze(group_id="outer", chord={"task": "tests.tsum"})
    first, middle, last = made.tasks
    assert isinstance(middle, _chain)
    assert (first.options["group_id"], first.options["group_index"]) == ("outer", 0)
    tail = middle.tasks[-1]
    assert isinstance(tail, group)
    assert [m.options["group_index"] for m in tail.tasks] == [1, 2]
    assert {m.options["group_id"] for m in tail.tasks} == {"outer"}
    assert last.options["group_index"] == 3
    assert middle.tasks[0].options.get("group_id") is None  # only a chain's last step joins
    assert made._part_count() == 4
    assert len(result) == 3


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
