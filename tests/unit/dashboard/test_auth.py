"""The dashboard's auth: the loopback rule, token and basic auth."""

from __future__ import annotations

import base64

import pytest
from starlette.testclient import TestClient

from celeriac.dashboard import create_app
from celeriac.dashboard.auth import TOKEN_COOKIE, check_bind, is_loopback, parse_auth
from celeriac.dashboard.feed import EventFeed
from celeriac.exceptions import ImproperlyConfigured


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"])
def test_loopback_addresses_are_loopback(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "example.com"])
def test_binding_beyond_loopback_without_auth_is_refused(host):
    with pytest.raises(ImproperlyConfigured, match="--auth token:SECRET or --auth basic"):
        check_bind(host, None)


def test_binding_beyond_loopback_with_auth_is_allowed():
    check_bind("0.0.0.0", parse_auth("token:s3cret"))


@pytest.mark.parametrize("value", ["token:", "basic:user", "basic::pw", "bearer:x", "s3cret"])
def test_bad_auth_values_are_refused(value):
    with pytest.raises(ImproperlyConfigured, match="token:SECRET or basic:USER:PASSWORD"):
        parse_auth(value)


def test_auth_repr_hides_the_secret():
    assert "s3cret" not in repr(parse_auth("basic:admin:s3cret"))


def test_token_is_required_and_kept_in_a_cookie(app):
    web = create_app(app, auth=parse_auth("token:s3cret"), feed=EventFeed(app))
    with TestClient(web) as client:
        assert client.get("/queues").status_code == 401
        assert client.get("/queues?token=wrong").status_code == 401
        first = client.get("/queues?token=s3cret&x=1", follow_redirects=False)
        assert first.status_code == 303
        assert first.headers["location"] == "/queues?x=1"
        assert TOKEN_COOKIE in first.headers["set-cookie"]
        assert "HttpOnly" in first.headers["set-cookie"]
        assert client.get("/queues").status_code == 200  # the cookie now
    with TestClient(web) as other:
        headers = {"Authorization": "Bearer s3cret"}
        assert other.get("/queues", headers=headers).status_code == 200


def test_basic_auth_asks_for_a_password(app):
    web = create_app(app, auth=parse_auth("basic:admin:pw"), feed=EventFeed(app))
    with TestClient(web) as client:
        denied = client.get("/queues")
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"].startswith("Basic")
        good = base64.b64encode(b"admin:pw").decode()
        bad = base64.b64encode(b"admin:nope").decode()
        assert client.get("/queues", headers={"Authorization": f"Basic {bad}"}).status_code == 401
        assert client.get("/queues", headers={"Authorization": f"Basic {good}"}).status_code == 200


def test_metrics_need_the_same_auth_as_the_pages(app):
    web = create_app(app, auth=parse_auth("token:s3cret"), feed=EventFeed(app))
    with TestClient(web) as client:
        assert client.get("/metrics").status_code == 401
        answer = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert answer.status_code == 200
        assert "celeriac_workers_present" in answer.text
