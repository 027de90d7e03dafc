"""The tasks pages: search (by id, name, state and time) and one task by id.

A task id goes straight to the result backend, so a task's page works after a restart;
the search by name, state and time looks through the events cache and the backend's
newest stored results (`Sources.search`). The handlers are plain functions, which
Starlette runs in its thread pool: their blocking reads stay off the event loop.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse
from starlette.routing import Route

from celeriac import states
from celeriac.dashboard.render import page, sources_of
from celeriac.dashboard.sources import truncate
from celeriac.exceptions import CeleriacError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from celeriac.dashboard.sources import GraphNode

__all__ = ["routes"]

# States the search offers.
STATES = ("PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED")
# Search periods: label -> seconds back.
PERIODS = {"5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "all": 0}


def _since(value: str) -> float | None:
    """`5m`, `1h`... as an epoch, or an ISO time; None for all time."""
    if value in PERIODS:
        seconds = PERIODS[value]
        return time.time() - seconds if seconds else None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError as exc:
        raise HTTPException(
            400, f"since={value!r}: use 5m, 15m, 1h, 6h, all or an ISO time"
        ) from exc


def tasks(request: Request) -> Response:
    params = request.query_params
    task_id = params.get("id", "").strip()
    if task_id:
        return RedirectResponse(f"/tasks/{task_id}", status_code=303)
    name = params.get("name", "").strip()
    state = params.get("state", "").strip().upper()
    if state and state not in STATES:
        raise HTTPException(400, f"state={state!r}: use one of {', '.join(STATES)}")
    since = params.get("since", "all")
    found, partial = sources_of(request).search(name=name, state=state, since=_since(since))
    rows = [
        {
            "id": t.uuid,
            "name": t.name or "?",
            "state": t.state,
            "args": truncate(t.args or ""),
            "worker": t.hostname or "",
            "updated": t.updated,
            "runtime": t.runtime,
        }
        for t in found
    ]
    return page(
        request,
        "tasks",
        {
            "tasks": rows,
            "partial": partial,
            "name": name,
            "state": state,
            "since": since,
            "states": STATES,
            "periods": list(PERIODS),
            "title": "Tasks",
        },
    )


def task(request: Request) -> Response:
    task_id = str(request.path_params["task_id"])
    try:
        view = sources_of(request).task(task_id)
    except CeleriacError as exc:
        raise HTTPException(503, f"cannot read task {task_id}: {exc}") from exc
    if view is None:
        raise HTTPException(404, f"no task {task_id} in the result backend or recent events")
    graph = _layout(view.graph)
    return page(
        request,
        "task",
        {
            "task": view,
            "graph": graph,
            "ready": view.state in states.READY_STATES,
            "title": f"Task {task_id}",
        },
    )


def _layout(nodes: list[GraphNode]) -> dict[str, Any]:
    """Positions for the inline SVG: a row per depth, a column per sibling."""
    where = {node.id: (10 + node.column * 210, 10 + node.depth * 70) for node in nodes}
    placed = [{"node": node, "x": where[node.id][0], "y": where[node.id][1]} for node in nodes]
    edges = []
    for node in nodes:
        if node.parent in where:
            (px, py), (x, y) = where[node.parent], where[node.id]
            edges.append((px + 95, py + 44, x + 95, y))
    width = max((x for x, _ in where.values()), default=0) + 210
    height = max((y for _, y in where.values()), default=0) + 60
    return {"nodes": placed, "edges": edges, "width": width, "height": height}


routes = [Route("/tasks", tasks), Route("/tasks/{task_id}", task)]
