"""Signatures as data: building, options, partial application, `|`, dict and JSON forms.

Nothing here is sent; `tests/unit/test_canvas_messages.py` reads what sending publishes,
and `tests/integration/test_canvas_worker.py` runs canvases on a real worker.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from celeriac import Signature, chain, chord, chunks, group, signature, xmap, xstarmap
from celeriac.canvas import _chain, _chord, maybe_signature, subtask
from celeriac.exceptions import ImproperlyConfigured
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

    return app


def add(app: Celeriac) -> Any:
    return app.tasks["tests.add"]


def tsum(app: Celeriac) -> Any:
    return app.tasks["tests.tsum"]


def through_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


# -- building -------------------------------------------------------------------------


def test_signature_from_a_name_holds_the_wire_fields(app: Celeriac) -> None:
    sig: Signature[Any] = signature(
        "tests.add", (2,), {"y": 3}, {"queue": "q"}, immutable=True, app=app
    )
    assert dict(sig) == {
        "task": "tests.add",
        "args": [2],
        "kwargs": {"y": 3},
        "options": {"queue": "q"},
        "subtask_type": None,
        "immutable": True,
    }
    assert (sig.name, sig.args, sig.kwargs, sig.options) == (
        "tests.add",
        [2],
        {"y": 3},
        {"queue": "q"},
    )
    assert sig.immutable
    assert subtask is signature


def test_signature_from_a_task_knows_the_task(app: Celeriac) -> None:
    sig = signature(add(app), (1, 2), countdown=5)
    assert sig.name == "tests.add"
    assert sig.type is add(app)
    assert sig.options == {"countdown": 5}
    assert sig() == 3  # calling a signature runs the task body here


def test_s_is_partial_and_si_is_immutable(app: Celeriac) -> None:
    partial = add(app).s(2)
    frozen = add(app).si(2, 3)
    assert (partial.args, partial.immutable) == ([2], False)
    assert (frozen.args, frozen.immutable) == ([2, 3], True)


def test_set_updates_options_in_place_and_returns_the_signature(app: Celeriac) -> None:
    sig = add(app).s(1)
    assert sig.set(queue="other", countdown=3) is sig
    assert sig.options == {"queue": "other", "countdown": 3}
    sig.set(immutable=True)
    assert sig.immutable


def test_clone_prepends_args_merges_kwargs_and_options_and_leaves_the_original(
    app: Celeriac,
) -> None:
    sig = add(app).s(2, y=1).set(queue="a")
    copy = sig.clone((5,), {"y": 7}, priority=3)
    assert (copy.args, copy.kwargs) == ([5, 2], {"y": 7})
    assert copy.options == {"queue": "a", "priority": 3}
    assert (sig.args, sig.kwargs, sig.options) == ([2], {"y": 1}, {"queue": "a"})
    copy.args.append(99)
    assert sig.args == [2]


def test_an_immutable_clone_keeps_its_arguments_but_takes_options(app: Celeriac) -> None:
    copy = add(app).si(1, 1).clone((5,), {"y": 9}, queue="b")
    assert (copy.args, copy.kwargs, copy.options) == ([1, 1], {}, {"queue": "b"})


def test_a_group_id_once_set_is_not_overridden_by_a_caller(app: Celeriac) -> None:
    sig = add(app).s(1).set(group_id="g1")
    assert sig.clone(group_id="g2").options["group_id"] == "g1"


def test_link_and_link_error_accumulate_in_options(app: Celeriac) -> None:
    sig = add(app).s(1)
    first, second = tsum(app).s(), tsum(app).s()
    sig.link(first)
    sig.link(second)
    sig.on_error(first)
    assert sig.options["link"] == [first, second]
    assert sig.options["link_error"] == [first]


def test_a_signature_needs_a_name() -> None:
    with pytest.raises(ImproperlyConfigured, match="task name"):
        Signature(None)


def test_maybe_signature_rebuilds_dicts_and_refuses_other_values(app: Celeriac) -> None:
    sig = add(app).s(1)
    assert maybe_signature(sig) is sig
    assert maybe_signature(dict(sig), app=app) == sig
    with pytest.raises(ImproperlyConfigured, match="expected a signature"):
        maybe_signature(42)


# -- the pipe ---------------------------------------------------------------------------


def test_pipes_build_flat_chains(app: Celeriac) -> None:
    a, b, c, d = (add(app).s(n) for n in range(4))
    assert isinstance(a | b, _chain)
    assert (a | b).tasks == [a, b]
    assert ((a | b) | c).tasks == [a, b, c]
    assert (a | (b | c)).tasks == [a, b, c]
    assert ((a | b) | (c | d)).tasks == [a, b, c, d]


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


def test_a_group_of_one_is_unrolled_in_a_chain(app: Celeriac) -> None:
    made = add(app).s(1, 1) | group(add(app).s(2))
    assert made.tasks == [add(app).s(1, 1), add(app).s(2)]


# -- dict and JSON forms -----------------------------------------------------------------


def nested_canvas(app: Celeriac) -> _chain:
    """A chain of a task, a group of chords and chains, and a chord with a chain header."""
    inner = chord([add(app).s(1, 1), add(app).si(2, 2)], tsum(app).s().set(queue="q"))
    return chain(
        add(app).s(1, 1),
        group(inner, chain(add(app).s(3), add(app).s(4)), add(app).s(5).on_error(tsum(app).s())),
        chord([chain(add(app).s(1), group(add(app).s(2), add(app).s(3)))], tsum(app).s()),
        add(app).s(6),
    )


def test_composites_have_celerys_dict_layout(app: Celeriac) -> None:
    a, b = add(app).s(1), add(app).s(2)
    assert dict(chain(a, b)) == {
        "task": "celery.chain",
        "args": [],
        "kwargs": {"tasks": [a, b]},
        "options": {},
        "subtask_type": "chain",
        "immutable": False,
    }
    assert dict(group(a, b))["kwargs"] == {"tasks": [a, b]}
    assert dict(group(a, b))["subtask_type"] == "group"
    made = dict(chord([a], b))
    assert made["task"] == "celery.chord"
    assert made["subtask_type"] == "chord"
    assert made["kwargs"]["body"] == b
    assert made["kwargs"]["kwargs"] == {}
    assert made["kwargs"]["header"]["subtask_type"] == "group"


def test_nested_canvases_survive_a_json_round_trip(app: Celeriac) -> None:
    original = nested_canvas(app)
    wire = through_json(original)
    rebuilt = signature(wire, app=app)
    assert through_json(rebuilt) == wire
    assert isinstance(rebuilt, _chain)
    steps = rebuilt.tasks
    assert isinstance(steps[1], group)
    assert isinstance(steps[1].tasks[0], _chord)
    assert isinstance(steps[1].tasks[0].header, group)
    assert isinstance(steps[1].tasks[1], _chain)
    assert isinstance(steps[2], _chord)
    assert isinstance(steps[2].header.tasks[0], _chain)
    assert isinstance(steps[2].header.tasks[0].tasks[1], group)
    assert steps[1].tasks[0].header.tasks[1].immutable
    assert steps[1].tasks[0].body is not None
    assert steps[1].tasks[0].body.options == {"queue": "q"}
    assert steps[1].tasks[2].options["link_error"] == [tsum(app).s()]
    assert rebuilt.app is app


def test_a_frozen_canvas_survives_a_json_round_trip_with_its_ids(app: Celeriac) -> None:
    original = nested_canvas(app)
    result = original.freeze()
    wire = through_json(original)
    rebuilt = signature(wire, app=app)
    assert through_json(rebuilt) == wire
    assert isinstance(rebuilt, _chain)
    assert rebuilt.tasks[-1].id == result.id


def test_a_dict_with_a_list_header_is_read_as_a_chord(app: Celeriac) -> None:
    # Celery clients may send a chord header as a plain list of signatures.
    wire = through_json(chord([add(app).s(1, 1)], tsum(app).s()))
    wire["kwargs"]["header"] = wire["kwargs"]["header"]["kwargs"]["tasks"]
    rebuilt = signature(wire, app=app)
    assert isinstance(rebuilt, _chord)
    assert rebuilt.header.tasks == [add(app).s(1, 1)]


def test_signatures_pickle_and_deepcopy_to_the_same_class(app: Celeriac) -> None:
    import copy
    import pickle

    original = nested_canvas(app)
    assert pickle.loads(pickle.dumps(original)) == original
    assert type(pickle.loads(pickle.dumps(original))) is _chain
    copied = copy.deepcopy(original)
    assert copied == original
    assert isinstance(copied, _chain)
    assert type(copied.tasks[1]) is group


def test_map_starmap_and_chunks_are_immutable_builtin_calls(app: Celeriac) -> None:
    mapped = add(app).map([1, 2])
    assert isinstance(mapped, Signature)
    assert dict(mapped) == dict(xmap(add(app).s(), [1, 2]))
    assert mapped.name == "celery.map"
    assert mapped.kwargs == {"task": dict(add(app).s()), "it": [1, 2]}
    assert mapped.immutable
    starred = add(app).starmap([(1, 2)])
    assert dict(starred) == dict(xstarmap(add(app).s(), [(1, 2)]))
    assert starred.kwargs["it"] == [[1, 2]]
    assert starred.immutable
    split = add(app).chunks([(i, i) for i in range(5)], 2)
    assert isinstance(split, chunks)
    assert [part.kwargs["it"] for part in split.group().tasks] == [
        [[0, 0], [1, 1]],
        [[2, 2], [3, 3]],
        [[4, 4]],
    ]
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        add(app).chunks([(1, 1)], 0)


# -- freezing ---------------------------------------------------------------------------


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


def test_a_chord_counts_its_body_and_a_chain_its_last_reporting_step(app: Celeriac) -> None:
    two = group(add(app).s(1), add(app).s(2))
    assert chord([add(app).s(1)], two)._part_count() == 2
    assert chain(add(app).s(1), two)._part_count() == 2
    assert chain(two, add(app).s(1))._part_count() == 1
    assert group()._part_count() == 0
