"""`map`, `starmap` and `chunks`: immutable calls to Celery's built-in tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from celeriac import Signature, chunks, xmap, xstarmap
from celeriac.exceptions import ImproperlyConfigured
from tests.unit.canvas.helpers import add, sent

if TYPE_CHECKING:
    from celeriac import Celeriac


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
