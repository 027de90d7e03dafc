"""Signatures: building, options, partial application, dict, JSON and pickle forms, and
what sending one publishes (read back from the memory broker).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from celeriac import Signature, chain, chord, group, signature
from celeriac.canvas import _chain, _chord, maybe_signature, subtask
from celeriac.exceptions import ImproperlyConfigured
from tests.unit.canvas.helpers import add, nested_canvas, sent, through_json, tsum

if TYPE_CHECKING:
    from celeriac import Celeriac


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
