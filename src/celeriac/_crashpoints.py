"""Test-only crash points: make a worker process die at a chosen step.

`CELERIAC_CRASH_AT="after_fetch:0.05,before_ack:0.02"` makes the process call
`os._exit(CRASH_EXIT_CODE)` at those steps with those probabilities (`point` alone means
always). The reliability suite uses it to prove that a crash at any step loses nothing.
Unset (always, outside tests), `crash_point` is one dict lookup that finds nothing.

Points: after_fetch, before_run, before_store, after_store, before_ack, after_ack,
before_defer, after_defer (ETA and rate-limit hand-off), before_recover, after_recover
(the supervisor returning a dead child's messages), before_promote, after_promote (a
broker making due ETA messages ready: on SQLite inside the leasing transaction, before
and after the promoting statement; on Redis before a fetch that will promote and after
one that did; RabbitMQ promotes on the server, so it has none), before_beat_send,
after_beat_send (a beat leader sending a run: after its claim and before the send, and
after the send before its confirmation; where the claim, the send and the confirmation
are one step, before and after that step).

It lives outside `worker` because brokers call it too (nothing but the CLI imports
`worker`).
"""

from __future__ import annotations

import logging
import os
import random

__all__ = ["CRASH_EXIT_CODE", "POINTS", "armed", "crash_point", "parse_crash_points"]

logger = logging.getLogger("celeriac.worker")

CRASH_EXIT_CODE = 99
POINTS = frozenset(
    {
        "after_fetch",
        "before_run",
        "before_store",
        "after_store",
        "before_ack",
        "after_ack",
        "before_defer",
        "after_defer",
        "before_recover",
        "after_recover",
        "before_promote",
        "after_promote",
        "before_beat_send",
        "after_beat_send",
    }
)


def parse_crash_points(spec: str) -> dict[str, float]:
    """`"a:0.1,b"` → {"a": 0.1, "b": 1.0}; unknown points are an error."""
    points: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, probability = item.partition(":")
        if name not in POINTS:
            raise ValueError(f"unknown crash point {name!r}: use one of {sorted(POINTS)}")
        points[name] = float(probability) if probability else 1.0
    return points


_points = parse_crash_points(os.environ.get("CELERIAC_CRASH_AT", ""))


def armed() -> bool:
    """Whether any crash point is set (to skip work done only to place one)."""
    return bool(_points)


def crash_point(name: str) -> None:
    """Die here if the environment asks for it (tests only)."""
    if not _points:
        return
    probability = _points.get(name)
    if probability and random.random() < probability:
        logger.warning("crash point %s: exiting now (pid %d)", name, os.getpid())
        logging.shutdown()
        os._exit(CRASH_EXIT_CODE)
