"""Typing of results and canvas entry points."""

from __future__ import annotations

from typing import Any

from typing_extensions import assert_type

from celeriac import AsyncResult, Celeriac, GroupResult, Signature, chain, group

app = Celeriac("typing", broker="memory://typing")


@app.task
def add(x: int, y: int) -> int:
    return x + y


result: AsyncResult[int] = add.delay(1, 2)
wider: AsyncResult[object] = result  # AsyncResult is covariant
assert_type(add.s(1, 2), Signature[int])
assert_type(add.si(1, 2), Signature[int])
assert_type(group(add.s(1, 1), add.s(2, 2)).apply_async(), GroupResult)
assert_type(chain(add.s(1, 1), add.s(2)).apply_async(), Any)
assert_type(app.AsyncResult("id"), AsyncResult[Any])
narrow: AsyncResult[int] = app.AsyncResult("id")
