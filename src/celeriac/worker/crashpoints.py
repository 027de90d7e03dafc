"""Test-only crash points (see `celeriac._crashpoints`, where they live so that brokers
can use them too)."""

from __future__ import annotations

from celeriac._crashpoints import CRASH_EXIT_CODE, POINTS, crash_point, parse_crash_points

__all__ = ["CRASH_EXIT_CODE", "POINTS", "crash_point", "parse_crash_points"]
