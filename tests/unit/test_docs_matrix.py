"""docs/migrating-from-celery.md's tables are what `tests/docs_matrix.py` renders from the
settings and command definitions (regenerate: `python -m tests.docs_matrix`)."""

from __future__ import annotations

from tests import docs_matrix


def test_the_migration_matrix_matches_the_definitions() -> None:
    text = docs_matrix.PAGE.read_text()
    assert docs_matrix.rewrite(text) == text, (
        "docs/migrating-from-celery.md is stale: run .venv/bin/python -m tests.docs_matrix"
    )


def test_every_refused_setting_is_in_the_matrix_with_its_advice() -> None:
    from celeriac.app.celery_settings import UNSUPPORTED

    block = docs_matrix.render()
    for name, advice in UNSUPPORTED.items():
        assert f"| `{name}` |" in block
        assert advice in block
