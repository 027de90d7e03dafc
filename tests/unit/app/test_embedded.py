"""The embedded default: `celeriac.db` beside the module that created the app, as an
absolute path, and a warning when a producer would create a file no worker has opened."""

from __future__ import annotations

import importlib
import logging
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from celeriac.app.embedded import warn_if_unshared

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from celeriac import Celeriac


@pytest.fixture
def project_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Celeriac, Path]]:
    for variable in ("CELERIAC_BROKER_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(variable, raising=False)
    package = tmp_path / "embedded_proj"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "celery_app.py").write_text(
        textwrap.dedent(
            """
            from celeriac import Celeriac

            app = Celeriac("proj", set_as_current=False)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("embedded_proj.celery_app")
    yield module.app, package
    module.app.close()
    for name in ("embedded_proj.celery_app", "embedded_proj"):
        sys.modules.pop(name, None)


def test_the_default_file_is_beside_the_app_module_wherever_the_process_runs(
    project_app: tuple[Celeriac, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, package = project_app
    expected = f"sqlite:///{package.resolve() / 'celeriac.db'}"
    assert app.broker_url == expected
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert app.broker_url == expected
    assert app.result_backend_url == expected


def test_a_producer_creating_the_default_file_warns_once(
    project_app: tuple[Celeriac, Path], caplog: pytest.LogCaptureFixture
) -> None:
    app, package = project_app
    with caplog.at_level(logging.WARNING, logger="celeriac.app"):
        app.create_broker().close()
        app.create_broker().close()
    warnings = [r for r in caplog.records if "which no worker has opened yet" in r.message]
    assert len(warnings) == 1
    assert str(package.resolve() / "celeriac.db") in warnings[0].getMessage()


def test_no_warning_when_the_file_exists(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "celeriac.db").touch()
    with caplog.at_level(logging.WARNING, logger="celeriac.app"):
        warn_if_unshared(tmp_path)
    assert not caplog.records


def test_no_warning_with_a_broker_url(caplog: pytest.LogCaptureFixture) -> None:
    from celeriac.testing import memory_app

    with caplog.at_level(logging.WARNING, logger="celeriac.app"):
        memory_app("t").create_broker().close()
    assert not caplog.records
