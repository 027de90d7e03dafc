"""The charts page: throughput and latency over the last hour, drawn as inline SVG.

The buckets come from the feed's `Series` (the one piece of state a restart loses).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.routing import Route

from celeriac.dashboard.render import page, sources_of

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from celeriac.dashboard.charts import Bucket

__all__ = ["chart", "routes"]

# The drawing area of one chart, in SVG units.
WIDTH = 720
HEIGHT = 160


def chart(values: list[float | None], *, unit: str) -> dict[str, Any]:
    """A polyline's points for `values` (None leaves a gap), scaled to the chart."""
    top = max((v for v in values if v is not None), default=0.0) or 1.0
    step = WIDTH / max(1, len(values) - 1)
    lines: list[str] = []
    current: list[str] = []
    for i, value in enumerate(values):
        if value is None:
            if current:
                lines.append(" ".join(current))
                current = []
            continue
        current.append(f"{i * step:.1f},{HEIGHT - value / top * (HEIGHT - 10):.1f}")
        if len(current) == 1 and (i + 1 == len(values) or values[i + 1] is None):
            # A lone point: a short stroke, so that it shows.
            current.append(f"{max(0.0, i * step - 3):.1f},{current[0].split(',')[1]}")
    if current:
        lines.append(" ".join(current))
    return {"lines": lines, "top": top, "unit": unit, "width": WIDTH, "height": HEIGHT}


def _throughput(buckets: list[Bucket], seconds: int) -> list[float | None]:
    return [b.finished / seconds for b in buckets]


def charts(request: Request) -> Response:
    feed = sources_of(request).feed
    buckets = feed.series.window(time.time())
    seconds = feed.series.bucket
    finished = sum(b.finished for b in buckets)
    failed = sum(b.failed for b in buckets)
    context = {
        "title": "Charts",
        "throughput": chart(_throughput(buckets, seconds), unit="tasks/s"),
        "failures": chart([b.failed / seconds for b in buckets], unit="failures/s"),
        "latency": chart([b.runtime_mean for b in buckets], unit="s mean runtime"),
        "latency_max": chart(
            [b.runtime_max if b.finished else None for b in buckets], unit="s max runtime"
        ),
        "finished": finished,
        "failed": failed,
        "bucket": seconds,
        "recent": _throughput(buckets[-6:], seconds),
    }
    return page(request, "charts", context)


routes = [Route("/charts", charts)]
