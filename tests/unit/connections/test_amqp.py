"""AMQP URL and option parsing (celeriac.connections.amqp): kombu's rules, no network."""

from __future__ import annotations

import ssl

import pytest

from celeriac.connections.amqp import Backoff, keepalive_interval, parse_amqp_url
from celeriac.exceptions import ImproperlyConfigured


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://u:p@h:5672//", "/"),
        ("amqp://u:p@h:5672/", "/"),
        ("amqp://u:p@h", "/"),
        ("amqp://u:p@h/%2F", "/"),
        ("amqp://u:p@h/foo", "foo"),
        ("amqp://u:p@h//foo", "/foo"),
        ("amqp://u:p@h/v%2Fx", "v/x"),
    ],
)
def test_vhost_is_decoded_like_kombu(url: str, vhost: str) -> None:
    assert parse_amqp_url(url).virtual_host == vhost


def test_credentials_are_unquoted() -> None:
    params = parse_amqp_url("amqp://us%40er:p%2Fss%3Aw@rabbit:5673/v")
    assert (params.userid, params.password) == ("us@er", "p/ss:w")
    assert params.hosts == (("rabbit", 5673),)


def test_defaults_match_kombu() -> None:
    params = parse_amqp_url("amqp://")
    assert params.hosts == (("localhost", 5672),)
    assert (params.userid, params.password, params.virtual_host) == ("guest", "guest", "/")
    assert params.heartbeat == 120.0
    assert params.ssl is False


def test_amqps_turns_tls_on_with_port_5671_and_hostname_check() -> None:
    params = parse_amqp_url("amqps://u:p@secure.example")
    assert params.hosts == (("secure.example", 5671),)
    assert params.ssl == {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": "secure.example"}
    assert params.scheme == "amqps"


def test_tls_options_come_from_the_ssl_transport_option() -> None:
    options = {"ssl": {"ca_certs": "/ca.pem", "cert_reqs": ssl.CERT_REQUIRED}}
    params = parse_amqp_url("amqps://h", options)
    assert params.ssl == {
        "ca_certs": "/ca.pem",
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": "h",
    }


def test_an_ssl_context_is_refused_since_py_amqp_would_ignore_it() -> None:
    with pytest.raises(ImproperlyConfigured, match="dict of TLS options"):
        parse_amqp_url("amqps://h", {"ssl": ssl.create_default_context()})


def test_query_string_and_options_set_heartbeat_and_timeout() -> None:
    assert parse_amqp_url("amqp://h", {"heartbeat": 10}).heartbeat == 10.0
    params = parse_amqp_url("amqp://h/?heartbeat=5&connect_timeout=2", {"heartbeat": 10})
    assert (params.heartbeat, params.connect_timeout) == (5.0, 2.0)


def test_failover_urls_become_several_hosts() -> None:
    params = parse_amqp_url("amqp://u:p@h1:1//;amqp://u:p@h2:2//")
    assert params.hosts == (("h1", 1), ("h2", 2))


def test_the_password_never_shows_in_repr_or_description() -> None:
    params = parse_amqp_url("amqp://user:s3cr3t-pw@h:5672//")
    assert "s3cr3t-pw" not in repr(params)
    assert "s3cr3t-pw" not in params.describe()
    assert params.describe() == "amqp://user@h:5672//"


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("redis://h", {}),
        ("amqp://h:notaport", {}),
        ("amqp://h", {"heartbeat": "soon"}),
        ("amqp://h", {"heartbeat": -1}),
        ("amqp://h/?heartbeat=often", {}),
    ],
)
def test_bad_urls_and_options_are_improperly_configured(
    url: str, options: dict[str, object]
) -> None:
    with pytest.raises(ImproperlyConfigured):
        parse_amqp_url(url, options)


def test_backoff_grows_to_its_maximum_with_jitter() -> None:
    backoff = Backoff(start=0.2, maximum=1.0)
    delays = [backoff.next_delay() for _ in range(6)]
    assert 0.16 <= delays[0] <= 0.24
    assert all(d <= 1.2 for d in delays)
    assert delays[-1] >= 0.8
    backoff.reset()
    assert backoff.next_delay() <= 0.24


def test_keepalive_ticks_well_within_the_heartbeat() -> None:
    assert keepalive_interval(60) == 15.0
    assert keepalive_interval(2) == 0.5
    assert keepalive_interval(0) == 30.0


def test_each_failover_host_is_checked_against_its_own_name() -> None:
    params = parse_amqp_url("amqps://u:p@one.example;amqps://u:p@two.example")
    assert params.ssl_for(0) == {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": "one.example"}
    assert params.ssl_for(1) == {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": "two.example"}
    named = parse_amqp_url("amqps://a;amqps://b", {"ssl": {"server_hostname": "rabbit"}})
    assert named.ssl_for(1)["server_hostname"] == "rabbit"  # type: ignore[index]


def test_an_unchecked_certificate_sends_no_host_name_to_check() -> None:
    params = parse_amqp_url("amqps://h", {"ssl": {"cert_reqs": "CERT_NONE"}})
    assert params.ssl == {"cert_reqs": ssl.CERT_NONE}


def test_celery_redis_style_tls_names_are_understood() -> None:
    options = {"ssl": {"ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "required"}}
    params = parse_amqp_url("amqps://h", options)
    assert params.ssl == {
        "ca_certs": "/ca.pem",
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": "h",
    }


def test_an_unknown_tls_option_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"'ca_file'.*ca_certs"):
        parse_amqp_url("amqps://h", {"ssl": {"ca_file": "/ca.pem"}})
