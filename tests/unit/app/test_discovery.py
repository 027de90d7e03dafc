"""`autodiscover_tasks`: when packages are read, Django's forms, and AppConfig paths."""

from __future__ import annotations

import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from celeriac.exceptions import ImproperlyConfigured
from celeriac.testing import memory_app

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Importable packages written by the test (removed from sys.modules afterwards)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write(root: Path, files: dict[str, str]) -> None:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


def test_a_callable_is_read_when_the_app_is_finalized(packages: Path) -> None:
    write(packages, {"shop/__init__.py": "", "shop/tasks.py": "LOADED = True\n"})
    app = memory_app()
    calls: list[str] = []

    def installed() -> list[str]:
        calls.append("read")
        return ["shop"]

    app.autodiscover_tasks(installed)
    assert calls == []
    app.finalize()
    assert calls == ["read"]
    assert "shop.tasks" in sys.modules


def test_an_app_config_path_means_its_apps_package(packages: Path) -> None:
    write(
        packages,
        {
            "billing/__init__.py": "",
            "billing/apps.py": "class BillingConfig:\n    name = 'billing'\n",
            "billing/tasks.py": "",
        },
    )
    app = memory_app()
    app.autodiscover_tasks(["billing.apps.BillingConfig"], force=True)
    assert "billing.tasks" in sys.modules


def test_a_missing_package_is_an_error(packages: Path) -> None:
    app = memory_app()
    with pytest.raises(ModuleNotFoundError, match="no_such_package"):
        app.autodiscover_tasks(["no_such_package"], force=True)


def test_no_packages_without_django_is_refused_at_finalize(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    app = memory_app()
    app.autodiscover_tasks()
    with pytest.raises(ImproperlyConfigured, match="DJANGO_SETTINGS_MODULE is not set"):
        app.finalize()
