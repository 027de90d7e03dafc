"""Fixtures of the connection tests: a small SQLite database in a temporary directory."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from celeriac.connections.sqlite import Database
from celeriac.exceptions import BackendError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(
        tmp_path / "t.db", schema="CREATE TABLE IF NOT EXISTS t (x INTEGER)", error=BackendError
    )
    yield db
    db.close()
