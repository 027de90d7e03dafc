"""Task states, with Celery's names and precedence.

`PENDING` is never stored: it is what a reader sees for an id with no result yet.
"""

from __future__ import annotations

__all__ = [
    "ALL_STATES",
    "EXCEPTION_STATES",
    "FAILURE",
    "IGNORED",
    "PENDING",
    "PROPAGATE_STATES",
    "READY_STATES",
    "RECEIVED",
    "REJECTED",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
    "UNREADY_STATES",
    "precedence",
]

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
REJECTED = "REJECTED"
RETRY = "RETRY"
IGNORED = "IGNORED"

# A result in one of these states will not change any more.
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
# The stored result of these states is an exception.
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
# `AsyncResult.get(propagate=True)` re-raises the exception of these states.
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED})

# Highest first; a custom state (e.g. "PROGRESS") ranks between FAILURE and REVOKED.
_PRECEDENCE = [SUCCESS, FAILURE, None, REVOKED, STARTED, RECEIVED, REJECTED, RETRY, PENDING]
_CUSTOM_INDEX = _PRECEDENCE.index(None)


def precedence(state: str) -> int:
    """Return the rank of `state`: lower ranks win when two states are merged."""
    try:
        return _PRECEDENCE.index(state)
    except ValueError:
        return _CUSTOM_INDEX
