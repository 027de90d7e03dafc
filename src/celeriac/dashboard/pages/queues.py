"""The queues page: depth by kind (ready, delayed, held), rates and the oldest message."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import Route

from celeriac.dashboard.render import page, sources_of
from celeriac.exceptions import CeleriacError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["routes"]


def queues(request: Request) -> Response:
    error = ""
    try:
        rows = sources_of(request).queues()
    except CeleriacError as exc:
        rows, error = [], str(exc)
    return page(request, "queues", {"queues": rows, "error": error, "title": "Queues"})


routes = [Route("/queues", queues)]
