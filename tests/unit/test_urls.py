"""Hiding credentials in URLs before they reach logs or banners."""

from __future__ import annotations

import pytest

from celeriac._urls import redact, redact_url


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://user:s3cret@127.0.0.1:6379/0", "redis://user:***@127.0.0.1:6379/0"),
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:***@127.0.0.1:5672//"),
        ("rediss://u:s3cret@host/0#frag", "rediss://u:***@host/0#frag"),
    ],
)
def test_redact_hides_the_password(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://user@127.0.0.1:6379/0",
        "sqlite:///var/lib/celeriac.db",
        "memory://",
        "not a url",
        "",
    ],
)
def test_redact_leaves_a_url_without_password_unchanged(url: str) -> None:
    assert redact_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "redis://u:p@ss@host/0",
        "redis://u:pa/ss@host/0",
        "redis://u:pa?ss@host/0",
        "redis://u:pa#ss@host/0",
        "redis://:pa;ss@host/0",
    ],
)
def test_redact_hides_a_password_holding_url_delimiters(url: str) -> None:
    redacted = redact_url(url)
    assert "ss@" not in redacted
    assert redacted.startswith(("redis://u:***@host", "redis://:***@host"))


def test_redact_hides_a_password_query_parameter() -> None:
    url = "redis://127.0.0.1:6379/0?password=s3cret&socket_timeout=5"
    assert redact_url(url) == "redis://127.0.0.1:6379/0?password=***&socket_timeout=5"


def test_redact_hides_every_url_of_a_failover_list() -> None:
    url = "amqp://u:one@h1:5672//;amqp://u:two@h2:5672//"
    assert redact_url(url) == "amqp://u:***@h1:5672//;amqp://u:***@h2:5672//"


def test_redact_hides_the_tls_key_password_query_parameter() -> None:
    url = "rediss://h:6379/0?ssl_password=pw&ssl_ca_certs=/ca.pem"
    assert redact_url(url) == "rediss://h:6379/0?ssl_password=***&ssl_ca_certs=/ca.pem"


def test_redact_hides_secret_entries_of_option_dicts_at_any_depth() -> None:
    options = {
        "password": "pw",
        "sentinel_kwargs": {"password": "pw2", "socket_timeout": 1},
        "ssl": {"keyfile": "/k.pem", "ca_certs": "/ca.pem"},
        "global_keyprefix": "app:",
        "urls": ["redis://:pw3@h/0"],
    }
    assert redact(options) == {
        "password": "***",
        "sentinel_kwargs": {"password": "***", "socket_timeout": 1},
        "ssl": {"keyfile": "***", "ca_certs": "/ca.pem"},
        "global_keyprefix": "app:",
        "urls": ["redis://:***@h/0"],
    }
