"""Typing of tasks: `delay` and direct calls are checked against the function."""

from __future__ import annotations

from typing_extensions import assert_type

from celeriac import AsyncResult, AsyncTask, Celeriac, Task

app = Celeriac("typing", broker="memory://typing")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="typing.mul", max_retries=5, rate_limit="10/m")
def mul(x: int, y: int) -> int:
    return x * y


@app.task(bind=True, max_retries=3)
def fetch(self: Task[..., str], url: str) -> str:
    return url + str(self.request.retries)


@app.task
async def aget(url: str) -> bytes:
    return url.encode()


as_task: Task[[int, int], int] = add
assert_type(add.delay(1, 2), AsyncResult[int])
assert_type(add.delay(1, 2).get(timeout=1), int)
assert_type(add(1, 2), int)
assert_type(mul.delay(2, 3), AsyncResult[int])
assert_type(fetch.delay("u").get(), str)
as_async_task: AsyncTask[[str], bytes] = aget
assert_type(aget.delay("u"), AsyncResult[bytes])
assert_type(add.apply_async((1, 2), countdown=5), AsyncResult[int])

# Wrong argument types and counts are errors.
add.delay("x", 2)  # type: ignore[arg-type]
add.delay(1)  # type: ignore[call-arg]
add.delay(1, 2, 3)  # type: ignore[call-arg]
add(1, y="2")  # type: ignore[arg-type]
mul.delay(1, "2")  # type: ignore[arg-type]
aget.delay(3)  # type: ignore[arg-type]


# Unknown task options are errors too.
@app.task(max_retry=3)  # type: ignore[call-overload, untyped-decorator]
def typo(x: int) -> int:
    return x


async def asyncio_client() -> None:
    """The asyncio twins are typed like the calls they mirror."""
    result = await add.adelay(1, 2)
    assert_type(result, AsyncResult[int])
    assert_type(await result.aget(timeout=1), int)
    assert_type(await add.aapply_async((1, 2), countdown=5), AsyncResult[int])
    await add.adelay("x", 2)  # type: ignore[arg-type]


def django_transactions() -> None:
    assert_type(add.delay_on_commit(1, 2), None)
    add.delay_on_commit(1)  # type: ignore[call-arg]
