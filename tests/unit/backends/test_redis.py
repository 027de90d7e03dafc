"""The Redis result backend's key prefix rule. No server."""

from __future__ import annotations

import pytest

from celeriac.backends.redis import _global_prefix


@pytest.mark.parametrize(
    ("configured", "expected"),
    [(None, ""), ("app", "app_"), ("app:", "app:"), ("a-", "a-"), ("a.", "a."), ("a_", "a_")],
)
def test_backend_prefix_follows_celerys_rule(configured: str | None, expected: str) -> None:
    assert _global_prefix({"global_keyprefix": configured}) == expected
