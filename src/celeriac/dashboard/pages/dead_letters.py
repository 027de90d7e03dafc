"""The dead letters page: each letter's reason, counts per reason, replay and purge."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import Route

from celeriac.dashboard.render import page, sources_of
from celeriac.dashboard.sources import truncate
from celeriac.exceptions import CeleriacError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["routes"]


def dead_letters(request: Request) -> Response:
    error = ""
    rows: list[dict[str, object]] = []
    counts: list[tuple[str, int]] = []
    try:
        letters, by_reason = sources_of(request).dead_letters()
        counts = by_reason.most_common()
        for letter in letters:
            headers = letter.message.headers
            rows.append(
                {
                    "id": letter.id,
                    "queue": letter.queue,
                    "task": headers.get("task") or "?",
                    "task_id": headers.get("id") or "",
                    "args": truncate(headers.get("argsrepr") or ""),
                    "reason": truncate(letter.reason, 300),
                    "failed_at": letter.failed_at.strftime("%Y-%m-%d %H:%M:%S"),
                    "trimmed": letter.body_size is not None,
                }
            )
    except CeleriacError as exc:
        error = str(exc)
    return page(
        request,
        "dead_letters",
        {"letters": rows, "counts": counts, "error": error, "title": "Dead letters"},
    )


routes = [Route("/dead-letters", dead_letters)]
