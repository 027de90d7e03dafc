"""Rendering pages: the templates, their filters and the context every page shares.

A page renders whole, or with `?fragment=1` only its live part (the `#live` element),
which the page's script fetches again whenever the live stream says something moved.
Templates escape everything (autoescape); nothing here marks text safe.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.templating import Jinja2Templates

from celeriac.dashboard import csrf

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from celeriac.dashboard.sources import Sources

__all__ = ["TEMPLATES", "page", "sources_of"]

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _clock(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def _rate(value: float) -> str:
    return f"{value:.1f}/s" if value else "0/s"


TEMPLATES.env.filters["ago"] = _ago
TEMPLATES.env.filters["clock"] = _clock
TEMPLATES.env.filters["rate"] = _rate


def sources_of(request: Request) -> Sources:
    sources: Sources = request.app.state.sources
    return sources


def page(request: Request, name: str, context: dict[str, Any]) -> Response:
    """`name`.html whole, or its live part `name`_live.html with `?fragment=1`."""
    sources = sources_of(request)
    fragment = request.query_params.get("fragment") == "1"
    shared = {
        "csrf_token": csrf.token_for(request),
        "broker_url": sources.broker_url(),
        "backend_url": sources.backend_url(),
        "feed": sources.feed,
        "now": time.time(),
        "notice": request.query_params.get("notice", ""),
        "current": name,
    }
    template = f"{name}_live.html" if fragment else f"{name}.html"
    response = TEMPLATES.TemplateResponse(request, template, {**shared, **context})
    response.headers["cache-control"] = "no-store"
    csrf.remember(request, response)
    return response
