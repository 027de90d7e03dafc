"""Prometheus metrics: `/metrics` in Prometheus' text format (the `metrics` extra).

Two views, each served by whoever can see it:

- The fleet, read from the broker at each scrape (`render`, `asgi_app`; the dashboard
  serves it): queue depth (ready, delayed, held), the oldest overdue message's age,
  dead letters, and the workers present.
- One worker's tasks, counted where they run (`celeriac worker --metrics-port`, see
  `celeriac.metrics.worker`): tasks by name and final state, runtime histograms,
  redeliveries and prefork children lost.

```python
from starlette.routing import Route
from celeriac.metrics import asgi_app

routes = [Route("/metrics", asgi_app(app))]
```

Nothing here imports `prometheus_client` until it is used.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, final

from celeriac.metrics.client import CONTENT_TYPE, require_client

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping, Sequence

    from celeriac.app.base import Celeriac

    Scope = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
    Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

__all__ = ["CONTENT_TYPE", "MetricsApp", "asgi_app", "render"]


def render(app: Celeriac, *, queues: Sequence[str] | None = None) -> bytes:
    """The fleet's metrics, read from `app`'s broker now, in Prometheus' text format.

    Args:
        app: The app whose broker is read.
        queues: The queues to report (default: the default queue and `task_queues`).

    Raises:
        ImproperlyConfigured: prometheus_client is not installed.
    """
    require_client()
    from prometheus_client import CollectorRegistry, generate_latest

    from celeriac.metrics.fleet import FleetCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(app, queues=queues))
    return generate_latest(registry)


def asgi_app(app: Celeriac, *, queues: Sequence[str] | None = None) -> MetricsApp:
    """An ASGI app answering GET with `render(app)`, for `/metrics` in Starlette, FastAPI
    or any ASGI router (an ASGI object, not a function: Starlette's `Route` passes it
    the raw request then, as `Mount` does)."""
    require_client()
    return MetricsApp(app, queues=queues)


@final
class MetricsApp:
    """The ASGI app `asgi_app` returns."""

    def __init__(self, app: Celeriac, *, queues: Sequence[str] | None = None) -> None:
        self.app = app
        self.queues = queues

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope.get("method") not in ("GET", "HEAD"):
            await _respond(send, 405, b"only GET\n", "text/plain; charset=utf-8")
            return
        # In a thread: it reads the broker, which blocks.
        body = await asyncio.to_thread(render, self.app, queues=self.queues)
        await _respond(send, 200, b"" if scope["method"] == "HEAD" else body, CONTENT_TYPE)


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
