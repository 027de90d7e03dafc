"""Canvases on a real worker (prefork, two children) on the embedded SQLite broker.

One worker serves the whole module (see `canvas_tasks.py`); each test sends its canvas
from this process and checks what a user sees (results, states, errbacks called) and,
where the spec says how, the messages every process published, read back from the
broker's publish log.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from celeriac import chain, chord, group, signature, states
from celeriac.exceptions import ChordError, TaskRevokedError
from celeriac.result import GroupResult
from tests.helpers import unique, wait_for
from tests.integration.canvas_tasks import CanvasWorker, canvas_worker

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.integration

# Generous: a result is normally there within milliseconds.
TIMEOUT = 20.0


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CanvasWorker]:
    with canvas_worker(tmp_path_factory.mktemp("canvas"), "-c", "2") as running:
        yield running


@pytest.fixture
def t(worker: CanvasWorker) -> Iterator[Any]:
    """The `tasks` module; after each test, the worker must still be alive and no
    process may ever have sent `celery.chord_unlock` (chords join by counter)."""
    worker.assert_alive()
    yield worker.tasks
    worker.assert_alive()
    assert [m for m in worker.sent() if m.task == "celery.chord_unlock"] == []


def errbacks_for(worker: CanvasWorker, task_id: str) -> list[dict[str, Any]]:
    return [e for e in worker.events("errback") if e["task_id"] == task_id]


# -- signatures -------------------------------------------------------------------------


def test_signature_delay_and_apply_async_apply_partial_arguments(t: Any) -> None:
    assert t.add.s(2).delay(5).get(timeout=TIMEOUT) == 7
    assert t.add.s(y=3).apply_async((5,)).get(timeout=TIMEOUT) == 8
    assert signature("tasks.mul", (3,), immutable=True).delay(100).get(timeout=TIMEOUT) == 6
    clone = t.add.s(1).clone(kwargs={"y": 10})
    assert clone.delay().get(timeout=TIMEOUT) == 11


# -- chains -----------------------------------------------------------------------------


def test_a_chain_passes_each_result_to_the_next_step(t: Any) -> None:
    assert chain(t.add.s(4, 4), t.mul.s(10), t.add.s(1))().get(timeout=TIMEOUT) == 81
    assert (t.add.s(4, 4) | t.mul.s(10) | t.add.s(1))().get(timeout=TIMEOUT) == 81
    assert chain(t.add.s(4), t.mul.s(10))(4).get(timeout=TIMEOUT) == 80


def test_an_immutable_step_ignores_the_previous_result(t: Any) -> None:
    assert chain(t.add.s(1, 1), t.add.si(10, 10), t.mul.s(2))().get(timeout=TIMEOUT) == 40


def test_a_chains_result_links_back_through_every_step(t: Any) -> None:
    result = chain(t.add.s(1, 1), t.mul.s(3), t.add.s(4))()
    assert result.get(timeout=TIMEOUT) == 10
    values = []
    node: Any = result
    while node is not None:
        values.append(node.get(timeout=TIMEOUT))
        node = node.parent
    assert values == [10, 6, 2]


def test_chain_steps_carry_their_parent_and_root_ids(worker: CanvasWorker, t: Any) -> None:
    key = unique("chain")
    result = chain(t.whoami.s(key=key), t.whoami.s(key=key), t.whoami.s(key=key))()
    third = result.get(timeout=TIMEOUT)
    second = result.parent.get(timeout=TIMEOUT)
    first = result.parent.parent.get(timeout=TIMEOUT)
    assert (first["parent_id"], first["root_id"]) == (None, first["id"])
    assert (second["parent_id"], second["root_id"]) == (first["id"], first["id"])
    assert (third["parent_id"], third["root_id"]) == (second["id"], first["id"])
    # The worker sent steps two and three, each with the next step's parent result
    # prepended, and the rest of the chain (reversed) in embed.chain (spec §1.8).
    sent = worker.sent_for(second["id"])
    assert sent.headers["parent_id"] == first["id"]
    assert sent.headers["root_id"] == first["id"]
    assert sent.args == [first]
    assert [s["options"]["task_id"] for s in sent.embed["chain"]] == [third["id"]]
    assert worker.sent_for(third["id"]).embed["chain"] is None
    # Every step reports to the client's reply queue (Celery's reply_to), not the worker's.
    assert {worker.sent_for(r["id"]).properties["reply_to"] for r in (first, second, third)} == {
        t.app.thread_oid
    }


def test_a_failing_step_stops_the_chain_fails_the_rest_and_calls_its_errbacks(
    worker: CanvasWorker, t: Any
) -> None:
    result = chain(t.add.s(1, 1), t.fail.s(), t.add.s(3), t.add.s(4)).apply_async(
        link_error=t.on_error_new.s()
    )
    with pytest.raises(ValueError, match=r"boom \[2\]"):
        result.get(timeout=TIMEOUT)
    rest = [result, result.parent]
    failed = result.parent.parent
    for never_ran in rest:
        # Marked, not run: same exception, and no message was ever sent for it.
        assert never_ran.state == states.FAILURE
        assert isinstance(never_ran.result, ValueError)
        assert str(never_ran.result) == "boom [2]"
        assert [m for m in worker.sent() if m.id == never_ran.id] == []
    assert failed.state == states.FAILURE
    assert result.parent.parent.parent.get(timeout=TIMEOUT) == 2
    # The chain's errback is attached to every step, but only the failed one calls it,
    # once, in the worker, as (request, exc, traceback).
    [called] = wait_for(lambda: errbacks_for(worker, failed.id), timeout=TIMEOUT)
    assert called["style"] == "new"
    assert (called["exc_type"], called["exc"]) == ("ValueError", "boom [2]")
    assert "Traceback" in called["traceback"]
    assert "ValueError: boom [2]" in called["traceback"]
    # New-style errbacks run inline before the failed task's message is acked: once
    # it is, every call that will ever happen has happened.
    wait_for(lambda: not worker.queued(failed.id), timeout=TIMEOUT, what="failed task acked")
    assert len(errbacks_for(worker, failed.id)) == 1
    assert not [e for e in worker.events("errback") if e["task_id"] in (rest[0].id, rest[1].id)]


def test_a_one_argument_errback_is_sent_the_failed_task_id(worker: CanvasWorker, t: Any) -> None:
    result = t.fail.s(7).apply_async(link_error=t.on_error_old.s())
    with pytest.raises(ValueError, match=r"boom \[7\]"):
        result.get(timeout=TIMEOUT)
    [called] = wait_for(lambda: errbacks_for(worker, result.id), timeout=TIMEOUT)
    assert called["style"] == "old"
    # Celery compat: sent as a task, in a group, with the failed task as its parent.
    [message] = [m for m in worker.sent() if m.task == "tasks.on_error_old"]
    assert message.args == [result.id]
    assert message.headers["parent_id"] == result.id
    assert message.headers["group"] is not None


def test_link_calls_every_callback_with_the_result(worker: CanvasWorker, t: Any) -> None:
    key = unique("link")
    result = t.add.s(2, 3).apply_async(link=[t.note.s(key), t.note.s(key)])
    assert result.get(timeout=TIMEOUT) == 5

    def notes() -> list[dict[str, Any]]:
        return [e for e in worker.events("note") if e["key"] == key]

    wait_for(lambda: len(notes()) == 2, timeout=TIMEOUT)
    assert [n["value"] for n in notes()] == [5, 5]
    # Celery compat: several callbacks go out as one group, sent by the worker with
    # the task as their parent, and recorded as its child.
    sent = [m for m in worker.sent() if m.task == "tasks.note" and m.args[0] == 5]
    sent = [m for m in sent if m.args[1] == key]
    assert len(sent) == 2
    assert {m.headers["parent_id"] for m in sent} == {result.id}
    assert len({m.headers["group"] for m in sent}) == 1
    assert sorted(c.id for c in result.children) == sorted(m.id for m in sent)


def test_link_on_a_chain_a_group_and_a_chord(worker: CanvasWorker, t: Any) -> None:
    key = unique("links")
    chained = chain(t.add.s(1, 1), t.mul.s(3)).apply_async(link=t.note.s(f"{key}-chain"))
    made = chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s())
    made.link(t.note.s(f"{key}-chord"))
    chorded = made()
    # Celery compat: a group's callback hangs off its first task and gets no result.
    grouped = group(t.add.s(1, 1), t.add.s(2, 2))
    grouped.link(t.note.si("fixed", f"{key}-group"))
    grouped_result = grouped()
    assert chained.get(timeout=TIMEOUT) == 6
    assert chorded.get(timeout=TIMEOUT) == 6
    assert grouped_result.get(timeout=TIMEOUT) == [2, 4]

    def noted(suffix: str) -> list[Any]:
        return [e["value"] for e in worker.events("note") if e["key"] == f"{key}-{suffix}"]

    wait_for(lambda: noted("chain") and noted("chord") and noted("group"), timeout=TIMEOUT)
    assert (noted("chain"), noted("chord"), noted("group")) == ([6], [6], ["fixed"])


def test_link_error_on_a_group_reaches_the_failing_member(worker: CanvasWorker, t: Any) -> None:
    made = group(t.add.s(1, 1), t.fail.s(3))
    made.link_error(t.on_error_new.s())
    result = made()
    with pytest.raises(ValueError, match=r"boom \[3\]"):
        result.get(timeout=TIMEOUT)
    failed = result.results[1]
    [called] = wait_for(lambda: errbacks_for(worker, failed.id), timeout=TIMEOUT)
    assert called["exc"] == "boom [3]"
    assert errbacks_for(worker, result.results[0].id) == []


def test_a_chain_step_that_cannot_be_sent_fails_the_rest_once(worker: CanvasWorker, t: Any) -> None:
    key = unique("unsendable")
    # whoami returns a dict; add(dict, 1, 2) does not fit add(x, y): the worker cannot
    # send that step. The chain fails instead of the first task running forever.
    result = chain(t.whoami.s(key=key), t.add.s(1, 2), t.add.s(3)).apply_async(
        link_error=t.on_error_new.s()
    )
    with pytest.raises(TypeError, match="bad arguments"):
        result.get(timeout=TIMEOUT)
    assert result.parent.state == states.FAILURE
    first = result.parent.parent
    assert first.state == states.SUCCESS
    wait_for(lambda: errbacks_for(worker, result.parent.id), timeout=TIMEOUT)
    wait_for(lambda: not worker.queued(first.id), timeout=TIMEOUT, what="first task acked")
    assert len([e for e in worker.events("whoami") if e["key"] == key]) == 1
    worker.assert_alive()


def test_a_callback_that_cannot_be_sent_leaves_the_task_successful(
    worker: CanvasWorker, t: Any
) -> None:
    key = unique("bad-callback")
    result = t.whoami.s(key=key).apply_async(link=[t.add.s(1, 2), t.note.s(key)])
    assert result.get(timeout=TIMEOUT)["id"] == result.id
    assert result.state == states.SUCCESS
    # The good callback still ran; the task was not redelivered for the bad one.
    wait_for(lambda: [e for e in worker.events("note") if e["key"] == key], timeout=TIMEOUT)
    wait_for(lambda: not worker.queued(result.id), timeout=TIMEOUT, what="task acked")
    assert len([e for e in worker.events("whoami") if e["key"] == key]) == 1


# -- groups -----------------------------------------------------------------------------


def test_a_group_returns_results_in_call_order(t: Any) -> None:
    # The first member finishes last: order follows the call, not completion.
    result = group(t.nap.s(0.4, "a"), t.nap.s(0.2, "b"), t.nap.s(0.0, "c"))()
    assert isinstance(result, GroupResult)
    assert result.get(timeout=TIMEOUT) == ["a", "b", "c"]
    assert result.join(timeout=TIMEOUT) == ["a", "b", "c"]
    assert result.ready()
    assert result.successful()
    assert not result.failed()
    assert result.completed_count() == 3


def test_a_group_reports_progress_and_failures(t: Any) -> None:
    # The last member waits on a queue nobody consumes: the group is never complete.
    waiting = t.add.s(5, 5).set(queue=unique("idle"))
    result = group(t.add.s(1, 2), t.fail.s(2), waiting)()
    wait_for(lambda: result.results[1].ready() and result.results[0].ready(), timeout=TIMEOUT)
    assert result.completed_count() == 1
    assert result.failed()
    assert not result.ready()
    assert not result.successful()
    with pytest.raises(ValueError, match=r"boom \[2\]"):
        result.get(timeout=TIMEOUT)  # the first failure, without waiting for the rest
    result.results[2].revoke()
    assert result.ready()
    values = result.join(timeout=TIMEOUT, propagate=False)
    assert values[0] == 3
    assert isinstance(values[1], ValueError)
    assert isinstance(values[2], TaskRevokedError)


def test_a_saved_group_is_restored_by_id(t: Any) -> None:
    result = group(t.add.s(i, i) for i in range(4))()
    result.save()
    restored = GroupResult.restore(result.id, app=t.app)
    assert restored is not None
    assert restored.id == result.id
    assert [r.id for r in restored.results] == [r.id for r in result.results]
    assert restored.get(timeout=TIMEOUT) == [0, 2, 4, 6]
    assert GroupResult.restore(unique("never-saved"), app=t.app) is None


def test_a_revoked_group_reads_revoked(worker: CanvasWorker, t: Any) -> None:
    # Sent to a queue nobody consumes, so nothing runs before the revoke.
    queue = unique("idle")
    result = group(t.add.s(1, 1), t.add.s(2, 2)).apply_async(queue=queue)
    result.revoke()
    assert [r.state for r in result.results] == [states.REVOKED] * 2
    assert result.ready()
    assert not result.successful()
    assert result.completed_count() == 0
    with pytest.raises(TaskRevokedError):
        result.get(timeout=TIMEOUT)
    assert t.app.broker.size(queue) == 2  # the messages still wait in their queue


def test_group_members_carry_the_group_id_and_their_index(worker: CanvasWorker, t: Any) -> None:
    key = unique("group")
    result = group(t.whoami.s(key=key) for _ in range(3))()
    records = result.get(timeout=TIMEOUT)
    assert [r["group"] for r in records] == [result.id] * 3
    assert [r["group_index"] for r in records] == [0, 1, 2]
    assert all(r["root_id"] == r["id"] and r["parent_id"] is None for r in records)
    sent = [worker.sent_for(r["id"]) for r in records]
    assert [(m.headers["group"], m.headers["group_index"]) for m in sent] == [
        (result.id, i) for i in range(3)
    ]
    assert [m.id for m in sent] == [r.id for r in result.results]
    # Stored results name their group (spec §1.9).
    assert {t.app.backend.get(r.id).group_id for r in result.results} == {result.id}


# -- chords -----------------------------------------------------------------------------


def test_a_chord_calls_its_body_with_the_header_results_in_header_order(t: Any) -> None:
    header = [t.nap.s(0.4, 1), t.nap.s(0.2, 2), t.nap.s(0.0, 3)]
    assert chord(header)(t.identity.s()).get(timeout=TIMEOUT) == [1, 2, 3]
    header = [t.nap.s(0.0, 1), t.nap.s(0.3, 2), t.nap.s(0.1, 3)]
    assert chord(header, t.identity.s())().get(timeout=TIMEOUT) == [1, 2, 3]


def test_the_chord_body_is_sent_by_the_worker_that_finished_the_last_part(
    worker: CanvasWorker, t: Any
) -> None:
    key = unique("body")
    result = chord([t.nap.s(0.0, 1), t.nap.s(0.4, 2)], t.whoami.s(key=key))()
    body = result.get(timeout=TIMEOUT)
    last = result.parent.results[1]
    assert body["args"] == [[1, 2]]
    assert body["parent_id"] == last.id
    assert body["root_id"] == last.id  # the header task's root: itself
    message = worker.sent_for(result.id)
    assert message.headers["parent_id"] == last.id
    assert message.headers["group"] is None


def test_a_chord_header_reports_through_the_atomic_counter_only(
    worker: CanvasWorker, t: Any
) -> None:
    result = chord([t.add.s(i, i) for i in range(5)], t.tsum.s())()
    assert result.get(timeout=TIMEOUT) == 20
    header_ids = {r.id for r in result.parent.results}
    caused = [
        m
        for m in worker.sent()
        if m.id in header_ids or m.headers["root_id"] in header_ids or m.id == result.id
    ]
    # Five header tasks and the body: no polling task, no retry, nothing else.
    assert sorted(m.task for m in caused) == ["tasks.add"] * 5 + ["tasks.tsum"]
    assert {m.headers["group"] for m in caused if m.task == "tasks.add"} == {result.parent.id}


def test_a_failing_header_task_fails_the_chord_and_calls_the_body_errbacks(
    worker: CanvasWorker, t: Any
) -> None:
    header = [t.add.s(1, 1), t.fail.s(5), t.add.s(2, 2)]
    result = chord(header, t.tsum.s().on_error(t.on_error_new.s()))()
    # The body's own outcome. (Following parents, as get() does by default, raises
    # the header member's ValueError instead once it is stored: Celery compat.)
    with pytest.raises(ChordError) as raised:
        result.get(timeout=TIMEOUT, follow_parents=False)
    failed_id = result.parent.results[1].id
    with pytest.raises(ValueError, match=r"boom \[5\]"):
        result.get(timeout=TIMEOUT)
    assert f"Dependency {failed_id} raised ValueError('boom [5]')" in str(raised.value)
    assert result.state == states.FAILURE
    [called] = wait_for(lambda: errbacks_for(worker, result.id), timeout=TIMEOUT)
    assert called["exc_type"] == "ChordError"
    assert failed_id in called["exc"]
    assert [m for m in worker.sent() if m.id == result.id] == []  # the body never ran


def test_a_chord_with_an_empty_header_calls_its_body_with_an_empty_list(t: Any) -> None:
    assert chord([], t.identity.s())().get(timeout=TIMEOUT) == []


def test_a_chord_of_a_thousand_header_tasks_completes(t: Any) -> None:
    started = time.monotonic()
    result = chord([t.add.s(i, i) for i in range(1000)], t.tsum.s())()
    sent = time.monotonic() - started
    assert result.get(timeout=120) == sum(2 * i for i in range(1000))
    elapsed = time.monotonic() - started
    print(f"chord of 1000: sent in {sent:.3f} s, body result after {elapsed:.3f} s")


# -- nesting ----------------------------------------------------------------------------


def test_a_chord_inside_a_chain(t: Any) -> None:
    workflow = chain(
        t.add.s(1, 1), chord([t.add.s(1), t.add.s(2)], t.tsum.s()), t.mul.s(10), t.add.s(1)
    )
    # 2 -> [3, 4] -> 7 -> 70 -> 71
    assert workflow().get(timeout=TIMEOUT) == 71


def test_a_group_inside_a_chain_becomes_a_chord_with_the_next_step(t: Any) -> None:
    workflow = chain(t.add.s(1, 1), group(t.add.s(1), t.mul.s(3)), t.identity.s())
    assert workflow().get(timeout=TIMEOUT) == [3, 6]
    ending = chain(t.add.s(1, 1), group(t.add.s(1), t.mul.s(3)))
    assert ending().get(timeout=TIMEOUT) == [3, 6]


def test_a_chain_inside_a_group(t: Any) -> None:
    workflow = group(chain(t.add.s(1, 1), t.mul.s(2)), t.add.s(5, 5), chain(t.mul.s(3, 3)))
    assert workflow().get(timeout=TIMEOUT) == [4, 10, 9]


def test_a_chord_whose_header_holds_chains(t: Any) -> None:
    header = [chain(t.add.s(1, 1), t.mul.s(2)), chain(t.add.s(2, 2), t.mul.s(3), t.add.s(1))]
    assert chord(header, t.identity.s())().get(timeout=TIMEOUT) == [4, 13]


def test_three_levels_of_nesting(t: Any) -> None:
    # chain > chord > (chord with a chain in its header, chain ending in a group)
    inner = chord([chain(t.add.s(1), t.mul.s(2)), t.add.s(10)], t.tsum.s())
    workflow = chain(
        t.add.s(1, 1),
        chord([inner, chain(t.mul.s(5), group(t.add.s(1), t.add.s(2)))], t.identity.s()),
        t.tsum.s(),
    )
    # 2 -> inner: [(2+1)*2, 12] -> 18 ; chain: 10 -> [11, 12]  => body [18, 11, 12] -> 41
    assert workflow().get(timeout=TIMEOUT) == 41


def test_a_chord_in_a_chord_header_reports_its_body_to_the_outer_chord(
    worker: CanvasWorker, t: Any
) -> None:
    key = unique("inner")
    inner = chord([t.add.s(1, 1), t.add.s(2, 2)], t.whoami.s(key=key))
    result = chord([t.add.s(5, 5), inner], t.identity.s())()
    values = result.get(timeout=TIMEOUT)
    outer_gid = result.parent.id
    assert values[0] == 10
    body = values[1]
    assert body["args"] == [[2, 4]]
    # spec §1.10: the inner body carries the outer group id and its index in it.
    assert (body["group"], body["group_index"]) == (outer_gid, 1)
    message = worker.sent_for(body["id"])
    assert message.embed["chord"]["options"]["task_id"] == result.id


def test_a_failing_task_in_a_chain_inside_a_chord_fails_the_chord(t: Any) -> None:
    header = [chain(t.add.s(1, 1), t.fail.s(), t.add.s(1)), t.add.s(1, 1)]
    result = chord(header, t.tsum.s())()
    with pytest.raises(ChordError, match=r"raised ValueError\('boom \[2\]'\)"):
        result.get(timeout=TIMEOUT, follow_parents=False)


def test_a_failure_three_levels_down_fails_the_outer_chord(t: Any) -> None:
    inner = chord([chain(t.add.s(1, 1), t.fail.s()), t.add.s(1, 1)], t.tsum.s())
    outer = chord([inner, t.add.s(2, 2)], t.tsum.s())
    result = outer()
    inner_id = result.parent.results[0].id
    with pytest.raises(ChordError, match=f"Dependency {inner_id} raised ChordError") as raised:
        result.get(timeout=TIMEOUT, follow_parents=False)
    assert "boom [2]" in str(raised.value)


# -- map, starmap, chunks ----------------------------------------------------------------


def test_map_starmap_and_chunks(t: Any) -> None:
    assert t.add.map([1, 2, 3]).delay().get(timeout=TIMEOUT) == [2, 3, 4]
    assert t.add.starmap([(1, 2), (3, 4)]).delay().get(timeout=TIMEOUT) == [3, 7]
    result = t.add.chunks([(i, i) for i in range(7)], 3).apply_async()
    assert result.get(timeout=TIMEOUT) == [[0, 2, 4], [6, 8, 10], [12]]


def test_map_ignores_a_parent_result_in_a_chain(t: Any) -> None:
    assert chain(t.add.s(1, 1), t.mul.map([1, 2]))().get(timeout=TIMEOUT) == [2, 4]
