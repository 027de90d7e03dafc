"""Redis URL and option parsing, the retry loop, and the key watcher's prefixes. No
server: nothing here opens a connection."""

from __future__ import annotations

import pytest
import redis
import redis.exceptions as redis_errors

from celeriac.connections.redis import (
    RetryPolicy,
    call_with_retry,
    connection_pool,
    pool_options,
)
from celeriac.connections.redis_watch import disjoint_prefixes
from celeriac.exceptions import (
    BrokerConnectionError,
    BrokerError,
    ImproperlyConfigured,
    PublishError,
)


def test_redis_url_gives_host_port_db_and_credentials() -> None:
    options = pool_options("redis://user:p%40ss@cache.local:6380/3")
    assert options["host"] == "cache.local"
    assert options["port"] == 6380
    assert options["db"] == 3
    assert options["username"] == "user"
    assert options["password"] == "p@ss"
    assert options["protocol"] == 2


def test_redis_url_defaults() -> None:
    options = pool_options("redis://")
    assert (options["host"], options["port"], options["db"]) == ("localhost", 6379, 0)
    assert "password" not in options


def test_dead_links_time_out_whatever_the_redis_py_version() -> None:
    # redis-py before 8 has no socket timeout: a read from a dead link blocks for ever.
    options = pool_options("redis://h")
    assert options["socket_timeout"] == 5.0
    assert options["socket_connect_timeout"] == 5.0
    assert options["socket_keepalive"] is True
    assert pool_options("redis://h?socket_timeout=30")["socket_timeout"] == 30.0
    unix = pool_options("redis+socket:///run/redis.sock")
    assert unix["socket_timeout"] == 5.0
    assert "socket_keepalive" not in unix


def test_database_may_come_from_the_query() -> None:
    assert pool_options("redis://h/1?db=4")["db"] == 4
    assert pool_options("redis://h?virtual_host=2")["db"] == 2


def test_unix_socket_url() -> None:
    options = pool_options("redis+socket:///run/redis.sock?virtual_host=5")
    assert options["path"] == "/run/redis.sock"
    assert options["db"] == 5
    assert options["connection_class"] is redis.UnixDomainSocketConnection


def test_rediss_verifies_certificates_by_default() -> None:
    options = pool_options("rediss://h:6380/0")
    assert options["connection_class"] is redis.SSLConnection
    assert options["ssl_cert_reqs"] == "required"


def test_tls_settings_from_query_and_ssl_option() -> None:
    options = pool_options("rediss://h/0?ssl_cert_reqs=CERT_NONE&ssl_ca_certs=/ca.pem")
    assert options["ssl_cert_reqs"] == "none"
    assert options["ssl_ca_certs"] == "/ca.pem"
    options = pool_options(
        "rediss://h/0",
        {"ssl": {"ssl_cert_reqs": "CERT_OPTIONAL", "ssl_certfile": "/c.pem"}},
    )
    assert options["ssl_cert_reqs"] == "optional"
    assert options["ssl_certfile"] == "/c.pem"


def test_tls_settings_on_a_plain_url_are_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="rediss://"):
        pool_options("redis://h/0", {"ssl": {"ssl_ca_certs": "/ca.pem"}})
    with pytest.raises(ImproperlyConfigured, match="rediss://"):
        pool_options("redis://h/0?ssl_cert_reqs=required")


def test_bad_certificate_requirement_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="ssl_cert_reqs"):
        pool_options("rediss://h/0?ssl_cert_reqs=sometimes")


def test_bad_database_and_scheme_are_refused_without_the_password() -> None:
    with pytest.raises(ImproperlyConfigured, match="not a number") as info:
        pool_options("redis://:secret@h/zero")
    assert "secret" not in str(info.value)
    with pytest.raises(ImproperlyConfigured, match="not a Redis URL"):
        pool_options("amqp://h//")
    with pytest.raises(ImproperlyConfigured, match="names no socket"):
        pool_options("redis+socket://")


def test_connection_options_are_typed() -> None:
    options = pool_options(
        "redis://h/0?socket_timeout=2.5",
        {"socket_keepalive": "true", "health_check_interval": "25", "client_name": "w1"},
    )
    assert options["socket_timeout"] == 2.5
    assert options["socket_keepalive"] is True
    assert options["health_check_interval"] == 25
    assert options["client_name"] == "w1"


def test_pool_is_not_connected_and_keeps_max_connections() -> None:
    pool = connection_pool("redis://h/0", {"max_connections": 7})
    assert pool.max_connections == 7
    assert pool.connection_kwargs["host"] == "h"
    pool.disconnect()


def test_retry_policy_backs_off_exponentially_to_a_cap() -> None:
    policy = RetryPolicy(max_retries=5, interval_start=0.1, interval_max=0.3)
    assert list(policy.delays()) == [0.1, 0.2, 0.3, 0.3, 0.3]
    assert RetryPolicy.from_options({"connection_retries": 2}).max_retries == 2


def test_call_with_retry_reconnects_until_it_works() -> None:
    pool = connection_pool("redis://h/0")
    attempts: list[int] = []
    sleeps: list[float] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise redis_errors.ConnectionError("down")
        return "ok"

    result = call_with_retry(
        flaky,
        pool=pool,
        policy=RetryPolicy(max_retries=5, interval_start=0.01),
        what="publish",
        error=PublishError,
        unreachable=BrokerConnectionError,
        sleep=sleeps.append,
    )
    assert result == "ok"
    assert sleeps == [0.01, 0.02]


def test_call_with_retry_gives_up_with_a_celeriac_error() -> None:
    pool = connection_pool("redis://:secret@h/0")

    def down() -> None:
        raise redis_errors.TimeoutError("timed out")

    with pytest.raises(BrokerConnectionError, match="after 3 attempts") as info:
        call_with_retry(
            down,
            pool=pool,
            policy=RetryPolicy(max_retries=2),
            what="receive",
            error=BrokerError,
            unreachable=BrokerConnectionError,
            sleep=lambda _: None,
        )
    assert isinstance(info.value.__cause__, redis_errors.TimeoutError)
    assert "secret" not in str(info.value)


def test_call_with_retry_does_not_retry_answers_or_bad_credentials() -> None:
    pool = connection_pool("redis://h/0")
    calls: list[int] = []

    def refuse(exc: Exception) -> None:
        calls.append(1)
        raise exc

    with pytest.raises(PublishError, match="WRONGTYPE"):
        call_with_retry(
            lambda: refuse(redis_errors.ResponseError("WRONGTYPE")),
            pool=pool,
            policy=RetryPolicy(),
            what="publish",
            error=PublishError,
            sleep=lambda _: None,
        )
    with pytest.raises(BrokerConnectionError, match="credentials"):
        call_with_retry(
            lambda: refuse(redis_errors.AuthenticationError("bad password")),
            pool=pool,
            policy=RetryPolicy(),
            what="connect",
            error=BrokerError,
            unreachable=BrokerConnectionError,
            sleep=lambda _: None,
        )
    assert len(calls) == 2


def test_watched_prefixes_never_overlap() -> None:
    keys = [b"celery", b"celery\x06\x163", b"celery_high", b"ab", b"a", b"b"]
    assert disjoint_prefixes(keys) == [b"a", b"b", b"celery"]


def test_rediss_checks_the_host_name_by_default() -> None:
    assert pool_options("rediss://h/0")["ssl_check_hostname"] is True
    assert pool_options("rediss://h/0?ssl_check_hostname=false")["ssl_check_hostname"] is False
    # Without a certificate check a host name check cannot be made.
    assert pool_options("rediss://h/0?ssl_cert_reqs=none")["ssl_check_hostname"] is False


def test_an_unknown_tls_option_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"ssl_ca_file.*ssl_ca_certs"):
        pool_options("rediss://h/0", {"ssl": {"ssl_ca_file": "/ca.pem"}})
