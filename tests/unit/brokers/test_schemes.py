"""URL scheme → broker class (`celeriac.brokers`), with install hints for missing drivers."""

from __future__ import annotations

import pytest

from celeriac import brokers
from celeriac.brokers import BROKER_SCHEMES, broker_class, create_broker, scheme_of
from celeriac.brokers.memory import MemoryBroker
from celeriac.exceptions import ImproperlyConfigured
from tests.helpers import fail_import


def test_broker_schemes_cover_the_design() -> None:
    assert {"memory", "sqlite", "redis", "rediss", "amqp", "amqps"} <= set(BROKER_SCHEMES)


@pytest.mark.parametrize(
    ("url", "scheme"),
    [("redis://h", "redis"), ("AMQP://h", "amqp"), ("sqlite:///x.db", "sqlite"), ("x", "")],
)
def test_scheme_of_reads_the_lower_case_scheme(url: str, scheme: str) -> None:
    assert scheme_of(url) == scheme


@pytest.mark.parametrize("url", ["memory://", "memory://named", "MEMORY://x"])
def test_memory_url_gives_the_memory_broker(url: str) -> None:
    assert broker_class(url) is MemoryBroker


def test_create_broker_builds_an_unconnected_instance() -> None:
    broker = create_broker("memory://schemes-test", consumer_id="c1")
    assert isinstance(broker, MemoryBroker)
    assert broker.url == "memory://schemes-test"


@pytest.mark.parametrize("url", ["kafka://u:s3cret@127.0.0.1:9092", "127.0.0.1:6379", ""])
def test_unknown_scheme_lists_the_valid_ones(url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"unknown .*URL scheme") as raised:
        broker_class(url)
    message = str(raised.value)
    for scheme in BROKER_SCHEMES:
        assert f"{scheme}://" in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("url", "module", "driver", "extra"),
    [
        ("redis://127.0.0.1:6379/0", "celeriac.brokers.redis.broker", "redis", "redis"),
        ("rediss://127.0.0.1:6379/0", "celeriac.brokers.redis.broker", "redis", "redis"),
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


def test_missing_celeriac_module_is_not_blamed_on_a_driver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = "celeriac.brokers.redis.broker"
    fail_import(monkeypatch, module, module)
    with pytest.raises(ImproperlyConfigured, match="not available in this celeriac installation"):
        broker_class("redis://127.0.0.1")


def test_import_error_of_a_driverless_transport_is_not_turned_into_an_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fail_import(monkeypatch, "celeriac.brokers.sqlite", "_sqlite3")
    with pytest.raises(ModuleNotFoundError, match="_sqlite3"):
        broker_class("sqlite:///x.db")


def test_scheme_table_points_at_the_package_it_lives_in() -> None:
    for module, _, _ in BROKER_SCHEMES.values():
        assert module.startswith(brokers.__name__ + ".")
