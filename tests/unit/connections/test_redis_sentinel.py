"""`celeriac.connections.redis_sentinel`: kombu's `sentinel://` lists and options."""

from __future__ import annotations

import pytest

from celeriac.connections.redis import connection_pool
from celeriac.connections.redis_sentinel import MasterConnection, sentinel_addresses
from celeriac.exceptions import ImproperlyConfigured


def test_every_sentinel_of_the_list_is_asked_with_the_default_port() -> None:
    url = "sentinel://:pw@s1:26380/2;sentinel://s2;sentinel://s3:26381"
    assert sentinel_addresses(url) == [("s1", 26380), ("s2", 26379), ("s3", 26381)]


def test_the_first_url_gives_the_masters_credentials_and_database() -> None:
    pool = connection_pool(
        "sentinel://user:pw@s1:26380/2;sentinel://s2",
        {"master_name": "mymaster", "socket_timeout": 3, "sentinel_kwargs": {"password": "sp"}},
    )
    try:
        kwargs = pool.connection_kwargs
        assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("user", "pw", 2)
        assert pool.connection_class is MasterConnection
        sentinels = pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
        first = sentinels[0].connection_pool.connection_kwargs
        assert (first["host"], first["port"], first["password"]) == ("s1", 26380, "sp")
        assert first["socket_timeout"] == 3.0
    finally:
        pool.disconnect()


def test_a_sentinel_list_without_master_name_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="master_name"):
        connection_pool("sentinel://s1:26379", {})


def test_a_redis_url_inside_a_sentinel_list_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="not a sentinel"):
        connection_pool("sentinel://s1;redis://h:6379", {"master_name": "m"})
