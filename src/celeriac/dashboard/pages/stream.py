"""The live stream (server-sent events): an `update` whenever the feed moved.

At most one update per `INTERVAL`, and one every `KEEPALIVE` even when nothing moved
(presence records and queue depths change without events). Each carries the feed's
event count and the `timestamp` of its newest event, so a client can tell how far
behind it is. The page's script fetches its live part again on each update.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

from starlette.responses import StreamingResponse
from starlette.routing import Route

from celeriac.dashboard.render import sources_of

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["INTERVAL", "KEEPALIVE", "routes"]

# Seconds between two updates at most.
INTERVAL = 0.5
# Seconds after which an update is sent even if no event came.
KEEPALIVE = 3.0


async def stream(request: Request) -> Response:
    feed = sources_of(request).feed

    async def updates() -> AsyncIterator[str]:
        seen = -1
        sent_at = 0.0
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            now = time.monotonic()
            if feed.version != seen or now - sent_at >= KEEPALIVE:
                seen, sent_at = feed.version, now
                data = {"version": seen, "events": feed.events_seen, "latest": feed.latest}
                yield f"event: update\ndata: {json.dumps(data)}\n\n"
            await asyncio.sleep(INTERVAL)

    return StreamingResponse(
        updates(),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


routes = [Route("/stream", stream)]
