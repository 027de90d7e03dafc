"""Celery's retry defaults and its exponential backoff (pure)."""

from __future__ import annotations

import random

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_RETRY_BACKOFF_MAX",
    "DEFAULT_RETRY_DELAY",
    "backoff_countdown",
]

# Celery's defaults for retries.
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_DELAY = 180.0
DEFAULT_RETRY_BACKOFF_MAX = 600.0


def backoff_countdown(factor: float, retries: int, maximum: float, *, full_jitter: bool) -> float:
    """Celery's exponential backoff: `factor * 2**retries`, capped, with full jitter."""
    countdown = min(maximum, factor * float(2**retries))
    if full_jitter:
        countdown = random.uniform(0, countdown)
    return max(0.0, countdown)
