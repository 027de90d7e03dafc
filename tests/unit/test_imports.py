"""Loading objects named by strings (`-A proj.app`, router paths, config objects)."""

from __future__ import annotations

import json
import os.path
import uuid
from typing import TYPE_CHECKING

import pytest

from celeriac._imports import import_object
from celeriac.protocol import codec

if TYPE_CHECKING:
    from pathlib import Path


def test_imports_a_module() -> None:
    assert import_object("json") is json
    assert import_object("celeriac.protocol.codec") is codec


def test_imports_an_attribute_after_a_colon() -> None:
    assert import_object("json:dumps") is json.dumps
    assert import_object("os.path:join") is os.path.join


def test_imports_a_dotted_attribute_after_a_colon() -> None:
    assert import_object("celeriac.protocol.codec:TaskCall.embed") is codec.TaskCall.embed


def test_imports_an_attribute_by_dots() -> None:
    assert import_object("json.dumps") is json.dumps
    assert import_object("celeriac.protocol.codec.encode_task") is codec.encode_task
    assert import_object("os.path.join") is os.path.join


def test_missing_module_raises_module_not_found() -> None:
    with pytest.raises(ModuleNotFoundError, match="nonexistent_xyz"):
        import_object("nonexistent_xyz")


def test_missing_package_is_not_mistaken_for_a_missing_attribute() -> None:
    with pytest.raises(ModuleNotFoundError) as raised:
        import_object("nonexistent_xyz.tasks.app")
    assert raised.value.name == "nonexistent_xyz"


@pytest.mark.parametrize("path", ["json:nope", "json.nope", "json:dumps.nope"])
def test_missing_attribute_raises_import_error_naming_it(path: str) -> None:
    with pytest.raises(ImportError, match=r"module 'json' has no attribute 'dumps\.nope'|'nope'"):
        import_object(path)


@pytest.mark.parametrize("path", ["", ":", ":app", ".relative", "..", " "])
def test_malformed_path_raises_import_error(path: str) -> None:
    with pytest.raises(ImportError, match="cannot import"):
        import_object(path)


def test_error_inside_the_imported_module_is_not_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import nonexistent_dependency_xyz\napp = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for path in (name, f"{name}.app", f"{name}:app"):
        with pytest.raises(ModuleNotFoundError) as raised:
            import_object(path)
        assert raised.value.name == "nonexistent_dependency_xyz"
