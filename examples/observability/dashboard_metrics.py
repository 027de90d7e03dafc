"""`/metrics` mounted in a Starlette (or FastAPI) app: the fleet's gauges for Prometheus.

    pip install "celeriac[metrics]" starlette uvicorn
    uvicorn dashboard_metrics:web --port 8000
    curl -s localhost:8000/metrics

Each worker serves its own task counters too: `celeriac -A proj worker --metrics-port 9808`.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.routing import Route

from celeriac import Celeriac
from celeriac.metrics import asgi_app

app = Celeriac("proj", broker=os.environ.get("BROKER_URL", "redis://localhost:6379/0"))

web = Starlette(routes=[Route("/metrics", asgi_app(app))])
