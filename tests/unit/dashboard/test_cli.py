"""`celeriac dashboard` without its extra says what to install."""

from __future__ import annotations

import sys

from click.testing import CliRunner

from celeriac.cli import EX_CONFIG, load_commands


def test_a_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    result = CliRunner().invoke(load_commands(), ["dashboard"])
    assert result.exit_code == EX_CONFIG
    assert 'pip install "celeriac[dashboard]"' in result.output
    assert "uvicorn" in result.output
