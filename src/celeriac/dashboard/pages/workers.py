"""The workers page: presence records, heartbeat events and `stats` replies merged."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.responses import RedirectResponse
from starlette.routing import Route

from celeriac.dashboard.render import page, sources_of
from celeriac.exceptions import CeleriacError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["routes"]


def home(request: Request) -> Response:
    return RedirectResponse("/workers", status_code=303)


def workers(request: Request) -> Response:
    error = ""
    try:
        rows = sources_of(request).workers()
    except CeleriacError as exc:
        rows, error = [], str(exc)
    return page(request, "workers", {"workers": rows, "error": error, "title": "Workers"})


routes = [Route("/", home), Route("/workers", workers)]
