"""A FastAPI app that sends tasks and awaits their results without blocking its loop.

Start a worker with `celeriac -A main worker -l info`, then the site with
`uvicorn main:web`. With Redis results (`CELERIAC_BROKER_URL=redis://...`), an awaited
result is a subscription on the event loop: a thousand waiting requests take no thread.
"""

from __future__ import annotations

from fastapi import FastAPI

from celeriac import Celeriac, group

app = Celeriac("main", broker="sqlite:///broker.db")  # or redis://localhost:6379/0


@app.task
def add(x: int, y: int) -> int:
    return x + y


web = FastAPI()


@web.get("/add")
async def add_numbers(x: int, y: int) -> dict[str, int]:
    result = await add.adelay(x, y)  # the publish runs off the event loop
    return {"sum": await result.aget(timeout=10)}


@web.get("/table")
async def table(n: int) -> dict[str, list[int]]:
    results = await group(add.s(i, i) for i in range(n)).adelay()
    return {"doubles": await results.aget(timeout=10)}
