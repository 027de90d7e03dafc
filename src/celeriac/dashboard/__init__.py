"""The built-in dashboard: `celeriac -A proj dashboard` (the `dashboard` extra).

Pages per concern (workers, queues, tasks, dead letters, charts), updated live over
server-sent events, reading the broker and result backend directly and the events
stream in a background thread. See docs/dashboard.md.

Importing this package needs Starlette and Jinja2 (`pip install "celeriac[dashboard]"`);
`cli/dashboard.py` says so when they are missing.
"""

from __future__ import annotations

from celeriac.dashboard.app import create_app

__all__ = ["create_app"]
