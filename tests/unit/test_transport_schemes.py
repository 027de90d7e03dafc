"""URL scheme → broker / result backend class, with install hints for missing drivers."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from celeriac import backends, brokers
from celeriac.backends import BACKEND_SCHEMES, backend_class, create_backend
from celeriac.backends.memory import MemoryBackend
from celeriac.brokers import BROKER_SCHEMES, broker_class, create_broker, scheme_of
from celeriac.brokers.memory import MemoryBroker
from celeriac.exceptions import ImproperlyConfigured

real_import_module = importlib.import_module


def fail_import(monkeypatch: pytest.MonkeyPatch, module: str, missing: str) -> None:
    """Make importing `module` fail as if `missing` were not installed."""

    def fake(name: str, package: str | None = None) -> Any:
        if name == module:
            raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)
        return real_import_module(name, package)

    monkeypatch.setattr(importlib, "import_module", fake)


def test_broker_schemes_cover_the_design() -> None:
    assert {"memory", "sqlite", "redis", "rediss", "amqp", "amqps"} <= set(BROKER_SCHEMES)


def test_backend_schemes_cover_the_design() -> None:
    assert {"memory", "sqlite", "redis", "rediss"} <= set(BACKEND_SCHEMES)


@pytest.mark.parametrize(
    ("url", "scheme"),
    [("redis://h", "redis"), ("AMQP://h", "amqp"), ("sqlite:///x.db", "sqlite"), ("x", "")],
)
def test_scheme_of_reads_the_lower_case_scheme(url: str, scheme: str) -> None:
    assert scheme_of(url) == scheme


@pytest.mark.parametrize("url", ["memory://", "memory://named", "MEMORY://x"])
def test_memory_url_gives_the_memory_broker_and_backend(url: str) -> None:
    assert broker_class(url) is MemoryBroker
    assert backend_class(url) is MemoryBackend


def test_create_broker_and_backend_build_unconnected_instances() -> None:
    broker = create_broker("memory://schemes-test", consumer_id="c1")
    backend = create_backend("memory://schemes-test", serializer="json", accept=["json"])
    assert isinstance(broker, MemoryBroker)
    assert isinstance(backend, MemoryBackend)
    assert broker.url == backend.url == "memory://schemes-test"


@pytest.mark.parametrize("lookup", [broker_class, backend_class])
@pytest.mark.parametrize("url", ["kafka://u:s3cret@127.0.0.1:9092", "127.0.0.1:6379", ""])
def test_unknown_scheme_lists_the_valid_ones(lookup: Any, url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"unknown .*URL scheme") as raised:
        lookup(url)
    message = str(raised.value)
    table = BROKER_SCHEMES if lookup is broker_class else BACKEND_SCHEMES
    for scheme in table:
        assert f"{scheme}://" in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("url", "module", "driver", "extra"),
    [
        ("redis://127.0.0.1:6379/0", "celeriac.brokers.redis", "redis", "redis"),
        ("rediss://127.0.0.1:6379/0", "celeriac.brokers.redis", "redis", "redis"),
        ("amqp://127.0.0.1:5672//", "celeriac.brokers.amqp.broker", "amqp", "amqp"),
        ("pyamqp://127.0.0.1:5672//", "celeriac.brokers.amqp.broker", "amqp", "amqp"),
    ],
)
def test_missing_broker_driver_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, driver: str, extra: str
) -> None:
    fail_import(monkeypatch, module, driver)
    with pytest.raises(
        ImproperlyConfigured, match=rf'\({driver}\): pip install "celeriac\[{extra}\]"'
    ):
        broker_class(url)


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


@pytest.mark.parametrize(
    ("lookup", "url", "module"),
    [
        (broker_class, "redis://127.0.0.1", "celeriac.brokers.redis"),
        (backend_class, "rpc://", "celeriac.backends.rpc"),
    ],
)
def test_missing_celeriac_module_is_not_blamed_on_a_driver(
    monkeypatch: pytest.MonkeyPatch, lookup: Any, url: str, module: str
) -> None:
    fail_import(monkeypatch, module, module)
    with pytest.raises(ImproperlyConfigured, match="not available in this celeriac installation"):
        lookup(url)


def test_import_error_of_a_driverless_transport_is_not_turned_into_an_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fail_import(monkeypatch, "celeriac.brokers.sqlite", "_sqlite3")
    with pytest.raises(ModuleNotFoundError, match="_sqlite3"):
        broker_class("sqlite:///x.db")


def test_scheme_tables_point_at_the_packages_they_live_in() -> None:
    for module, _, _ in BROKER_SCHEMES.values():
        assert module.startswith(brokers.__name__ + ".")
    for module, _, _ in BACKEND_SCHEMES.values():
        assert module.startswith(backends.__name__ + ".")
