"""Random canvases on a real worker give the same result as running them here.

Hypothesis builds trees of chains, groups and chords (up to three levels deep) over a few
deterministic tasks; each tree is sent once to one worker and the result is compared with
a small evaluator that calls the same task functions in this process, following Celery's
rules:

- a chain passes each result to the next step, and flattens nested chains;
- a group's value is its members' values in call order (nested groups flattened);
- a group followed by a step in a chain is a chord with that step as its body;
- a chord's body gets the header's *parts* in header order: a task is one part, a group
  its members' parts, a chain the parts of its last step, a chord the parts of its body
  (Celery's `_descend`), so a chain ending in a group gives one part per member.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celeriac import chain, chord, group
from tests.integration.canvas_tasks import CanvasWorker, canvas_worker

if TYPE_CHECKING:
    from collections.abc import Iterator

    from celeriac import Signature

pytestmark = pytest.mark.integration

TIMEOUT = 30.0


# -- the trees ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """One task: `add`/`mul` with a partial argument, `tsum`, `identity`, or an
    immutable `add.si(a, b)` that ignores what it is given."""

    task: str
    args: tuple[int, ...] = ()
    immutable: bool = False


@dataclass(frozen=True)
class Chain:
    steps: tuple[Node, ...]


@dataclass(frozen=True)
class Group:
    members: tuple[Node, ...]


@dataclass(frozen=True)
class Chord:
    header: tuple[Node, ...]
    body: Node


Node = Union[Leaf, Chain, Group, Chord]  # noqa: UP007 - a runtime alias on Python 3.10

LEAVES = st.one_of(
    st.integers(0, 5).map(lambda k: Leaf("add", (k,))),
    st.integers(1, 3).map(lambda k: Leaf("mul", (k,))),
    st.just(Leaf("tsum")),
    st.just(Leaf("identity")),
    st.tuples(st.integers(0, 5), st.integers(0, 5)).map(lambda ab: Leaf("add", ab, True)),
)


def canvases(depth: int) -> st.SearchStrategy[Node]:
    """A chain, group or chord whose children nest up to `depth` levels in all, one to
    three children each (a child is a task or, below the last level, a composite)."""
    child = LEAVES if depth <= 1 else st.one_of(LEAVES, canvases(depth - 1))
    children = st.lists(child, min_size=1, max_size=3).map(tuple)
    return st.one_of(
        children.map(Chain),
        children.map(Group),
        st.tuples(children, child).map(lambda hb: Chord(*hb)),
    )


# -- building the real thing ---------------------------------------------------------------


def build(node: Node, tasks: Any) -> Signature[Any]:
    if isinstance(node, Leaf):
        task = getattr(tasks, node.task)
        sig: Signature[Any] = task.si(*node.args) if node.immutable else task.s(*node.args)
        return sig
    if isinstance(node, Chain):
        return chain(*[build(step, tasks) for step in node.steps])
    if isinstance(node, Group):
        return group(*[build(member, tasks) for member in node.members])
    return chord([build(member, tasks) for member in node.header], build(node.body, tasks))


# -- the local evaluator -------------------------------------------------------------------


def flat_steps(node: Chain) -> list[Node]:
    """Nested chains flattened; a group followed by a step made a chord (as sent)."""
    flat: list[Node] = []
    for step in node.steps:
        flat.extend(flat_steps(step) if isinstance(step, Chain) else [step])
    steps: list[Node] = []
    for step in flat:
        if steps and isinstance(steps[-1], Group):
            header = steps.pop()
            assert isinstance(header, Group)
            steps.append(Chord(header.members, step))
        else:
            steps.append(step)
    return steps


def group_members(members: tuple[Node, ...]) -> list[Node]:
    flat: list[Node] = []
    for member in members:
        flat.extend(group_members(member.members) if isinstance(member, Group) else [member])
    return flat


def value(node: Node, given: Any, tasks: Any) -> Any:
    """What the worker returns for `node` applied to `given`."""
    if isinstance(node, Leaf):
        task = getattr(tasks, node.task)
        return task(*node.args) if node.immutable else task(given, *node.args)
    if isinstance(node, Chain):
        result = given
        for step in flat_steps(node):
            result = value(step, result, tasks)
        return result
    if isinstance(node, Group):
        return [value(member, given, tasks) for member in group_members(node.members)]
    header = [p for member in node.header for p in parts(member, given, tasks)]
    return value(node.body, header, tasks)


def parts(node: Node, given: Any, tasks: Any) -> list[Any]:
    """What `node` reports to a chord whose header holds it."""
    if isinstance(node, Leaf):
        return [value(node, given, tasks)]
    if isinstance(node, Group):
        return [p for member in node.members for p in parts(member, given, tasks)]
    if isinstance(node, Chain):
        steps = flat_steps(node)
        result = given
        for step in steps[:-1]:
            result = value(step, result, tasks)
        return parts(steps[-1], result, tasks)
    header = [p for member in node.header for p in parts(member, given, tasks)]
    return parts(node.body, header, tasks)


# -- the test ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CanvasWorker]:
    with canvas_worker(tmp_path_factory.mktemp("canvas-property"), "-c", "2") as running:
        yield running


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(tree=canvases(3), seed=st.integers(0, 9))
def test_a_random_canvas_gives_the_same_result_as_running_it_here(
    worker: CanvasWorker, tree: Node, seed: int
) -> None:
    tasks = worker.tasks
    expected = value(tree, seed, tasks)
    result = build(tree, tasks).apply_async((seed,))
    assert result.get(timeout=TIMEOUT) == expected, tree
    worker.assert_alive()
