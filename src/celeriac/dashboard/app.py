"""The dashboard's ASGI app: the pages, the live stream, the static files and the
feed's lifetime.

`create_app(celery_app)` returns a Starlette app; `cli/dashboard.py` serves it with
Uvicorn. The events feed starts with the app and stops with it. Every response gets a
strict Content-Security-Policy (scripts and styles from this site only) and refuses
framing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from celeriac.dashboard.auth import AuthMiddleware
from celeriac.dashboard.feed import EventFeed
from celeriac.dashboard.pages import actions, charts, dead_letters, stream, tasks, workers
from celeriac.dashboard.pages import queues as queue_pages
from celeriac.dashboard.sources import Sources
from celeriac.metrics import asgi_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from celeriac.app.base import Celeriac
    from celeriac.dashboard.auth import Auth

__all__ = ["create_app"]

# Sent with every response.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class _SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, sending)


def create_app(
    celery_app: Celeriac,
    *,
    auth: Auth | None = None,
    queues: tuple[str, ...] = (),
    enable_events: bool = True,
    feed: EventFeed | None = None,
) -> Starlette:
    """The dashboard over `celery_app`'s broker, backend and events.

    Args:
        celery_app: The app to show.
        auth: Who may see it (None: anyone who can reach it; bind to loopback then).
        queues: Queues to show besides the configured ones and those seen in events.
        enable_events: Ask the workers to send task events (as Flower does).
        feed: A feed to use instead of starting one (tests and the load script).
    """
    owned = feed is None
    the_feed = feed if feed is not None else EventFeed(celery_app, enable_events=enable_events)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if owned:
            the_feed.start()
        try:
            yield
        finally:
            if owned:
                the_feed.stop()

    middleware = [Middleware(_SecurityHeaders)]
    if auth is not None:
        middleware.append(Middleware(AuthMiddleware, auth=auth))
    routes = [
        *workers.routes,
        *queue_pages.routes,
        *tasks.routes,
        *dead_letters.routes,
        *charts.routes,
        *actions.routes,
        *stream.routes,
        # Prometheus' view of the fleet (the same gauges as celeriac.metrics.render),
        # behind the same auth as the pages.
        Route("/metrics", asgi_app(celery_app, queues=list(queues) or None)),
        Mount(
            "/static",
            app=StaticFiles(directory=str(Path(__file__).parent / "static")),
            name="static",
        ),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.sources = Sources(celery_app, the_feed, queues=queues)
    return app
