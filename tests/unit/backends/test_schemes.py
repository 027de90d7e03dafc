"""URL scheme → result backend class (`celeriac.backends`), with install hints for missing
drivers."""

from __future__ import annotations

import pytest

from celeriac import backends
from celeriac.backends import BACKEND_SCHEMES, backend_class, create_backend
from celeriac.backends.memory import MemoryBackend
from celeriac.exceptions import ImproperlyConfigured
from tests.helpers import fail_import


def test_backend_schemes_cover_the_design() -> None:
    assert {"memory", "sqlite", "redis", "rediss"} <= set(BACKEND_SCHEMES)


@pytest.mark.parametrize("url", ["memory://", "memory://named", "MEMORY://x"])
def test_memory_url_gives_the_memory_backend(url: str) -> None:
    assert backend_class(url) is MemoryBackend


def test_create_backend_builds_an_unconnected_instance() -> None:
    backend = create_backend("memory://schemes-test", serializer="json", accept=["json"])
    assert isinstance(backend, MemoryBackend)
    assert backend.url == "memory://schemes-test"


@pytest.mark.parametrize("url", ["kafka://u:s3cret@127.0.0.1:9092", "127.0.0.1:6379", ""])
def test_unknown_scheme_lists_the_valid_ones(url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"unknown .*URL scheme") as raised:
        backend_class(url)
    message = str(raised.value)
    for scheme in BACKEND_SCHEMES:
        assert f"{scheme}://" in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("url", "module", "driver", "extra"),
    [
        ("redis://127.0.0.1:6379/1", "celeriac.backends.redis", "redis", "redis"),
        ("rpc://", "celeriac.backends.rpc", "amqp", "amqp"),
    ],
)
def test_missing_backend_driver_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, driver: str, extra: str
) -> None:
    fail_import(monkeypatch, module, driver)
    with pytest.raises(
        ImproperlyConfigured, match=rf'\({driver}\): pip install "celeriac\[{extra}\]"'
    ):
        backend_class(url)


def test_missing_celeriac_module_is_not_blamed_on_a_driver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = "celeriac.backends.rpc"
    fail_import(monkeypatch, module, module)
    with pytest.raises(ImproperlyConfigured, match="not available in this celeriac installation"):
        backend_class("rpc://")


def test_scheme_table_points_at_the_package_it_lives_in() -> None:
    for module, _, _ in BACKEND_SCHEMES.values():
        # Integrations keep their backends with them (django-db in celeriac.contrib.django).
        assert module.startswith((backends.__name__ + ".", "celeriac.contrib."))
