"""Fixtures of the protocol tests."""

# kombu and Celery (the oracles here) ship no type hints.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import pytest
from celery import Celery


@pytest.fixture(scope="module")
def celery_app() -> Celery:
    """A stock Celery app, used only to build reference messages."""
    return Celery("oracle", set_as_current=False)
