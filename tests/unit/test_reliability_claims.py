"""The claim -> test table at the end of docs/reliability.md names tests that exist.

A renamed or deleted test would leave a documented guarantee without the test the
table says guards it; this fails first.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"`((?:chaos|integration|unit|contract)/[\w/]+\.py)(?:::(\w+))?`")


def _table() -> str:
    text = (ROOT / "docs" / "reliability.md").read_text()
    return text[text.index("## Claim -> test") :]


def test_every_test_the_claim_table_names_exists() -> None:
    references = REFERENCE.findall(_table())
    assert len(references) > 40  # the table is there and read
    missing = []
    for path, name in references:
        file = ROOT / "tests" / path
        if not file.exists():
            missing.append(path)
        elif name and not re.search(rf"^(async )?def {name}\(", file.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert missing == []
