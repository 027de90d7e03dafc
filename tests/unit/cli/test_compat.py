"""`celeriac.cli.compat`: Celery-only options are refused in one line with advice."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from celeriac.cli import load_commands


def run(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(load_commands(), list(args))
    return result.exit_code, result.output.splitlines()


@pytest.mark.parametrize("option", ["--loader", "--config"])
def test_a_celery_only_global_option_is_refused_with_advice(option: str) -> None:
    code, lines = run(option, "x", "-A", "tasks", "worker")
    assert code == 64
    assert len(lines) == 1
    assert lines[0].startswith(f"Error: {option} is a Celery option celeriac does not support: ")


def test_a_short_celery_only_worker_option_is_refused_glued_to_its_value() -> None:
    code, lines = run("-A", "tasks", "worker", "-S/var/state.db")
    assert code == 64
    assert lines == [
        "Error: -S is a Celery option celeriac worker does not support: revoked task ids "
        "are kept on the broker, shared by every worker: drop -S"
    ]


def test_an_unknown_option_of_another_command_gets_did_you_mean() -> None:
    code, lines = run("-A", "tasks", "purge", "--forse")
    assert code == 64
    assert lines == [
        "Error: no such option for celeriac purge: --forse (did you mean --force?); "
        "see celeriac purge --help"
    ]
