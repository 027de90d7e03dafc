"""Who may see the dashboard: a token or HTTP basic auth, and the loopback rule.

`--auth token:SECRET` lets in a request carrying `Authorization: Bearer SECRET`, or a
browser that opened any page once with `?token=SECRET` (redirected to the page without
it, the token then rides in an HttpOnly, SameSite=Strict cookie).
`--auth basic:USER:PASSWORD` asks the browser for a user and password. Without
`--auth` the dashboard binds only to a loopback address: `check_bind` refuses any
other address, so a fleet's controls are never open to a network by accident.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING, Literal, final
from urllib.parse import parse_qs, urlencode

from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["TOKEN_COOKIE", "Auth", "AuthMiddleware", "check_bind", "is_loopback", "parse_auth"]

# The cookie a browser keeps the token in after `?token=`.
TOKEN_COOKIE = "celeriac_dashboard_token"


@final
@dataclass(frozen=True, slots=True)
class Auth:
    """How requests prove who they are."""

    kind: Literal["token", "basic"]
    secret: str
    user: str = ""

    def __repr__(self) -> str:  # never print the secret
        return f"Auth(kind={self.kind!r}, user={self.user!r}, secret='***')"


def parse_auth(value: str) -> Auth:
    """`token:SECRET` or `basic:USER:PASSWORD`.

    Raises:
        ImproperlyConfigured: neither form, or an empty secret.
    """
    kind, _, rest = value.partition(":")
    if kind == "token" and rest:
        return Auth("token", rest)
    if kind == "basic":
        user, sep, password = rest.partition(":")
        if user and sep and password:
            return Auth("basic", password, user)
    raise ImproperlyConfigured(
        "--auth takes token:SECRET or basic:USER:PASSWORD (with a non-empty secret)"
    )


def is_loopback(host: str) -> bool:
    """True for localhost and addresses in 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, auth: Auth | None) -> None:
    """Refuse to serve beyond loopback without auth.

    Raises:
        ImproperlyConfigured: `host` is not a loopback address and `auth` is None.
    """
    if auth is None and not is_loopback(host):
        raise ImproperlyConfigured(
            f"the dashboard would listen on {host}, beyond loopback, with no auth: pass "
            "--auth token:SECRET or --auth basic:USER:PASSWORD (or bind to 127.0.0.1)"
        )


class AuthMiddleware:
    """ASGI middleware letting through only requests that pass `auth`."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if self.auth.kind == "basic":
            if self._basic_ok(headers.get("authorization", "")):
                await self.app(scope, receive, send)
                return
            await _deny(send, {"www-authenticate": 'Basic realm="celeriac dashboard"'})
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        offered = query.get("token", [""])[0]
        if offered and _same(offered, self.auth.secret):
            await self._keep_token(scope, query, send)
            return
        bearer = headers.get("authorization", "")
        cookie = SimpleCookie(headers.get("cookie", ""))
        kept = cookie[TOKEN_COOKIE].value if TOKEN_COOKIE in cookie else ""
        if (bearer.startswith("Bearer ") and _same(bearer[7:], self.auth.secret)) or (
            kept and _same(kept, self.auth.secret)
        ):
            await self.app(scope, receive, send)
            return
        await _deny(send, {})

    def _basic_ok(self, header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:], validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        return _same(user, self.auth.user) & _same(password, self.auth.secret)

    async def _keep_token(self, scope: Scope, query: dict[str, list[str]], send: Send) -> None:
        """Answer `?token=` with the cookie and a redirect to the same page without the
        token (out of the address bar, the history and the logs)."""
        cookie = f"{TOKEN_COOKIE}={self.auth.secret}; Path=/; HttpOnly; SameSite=Strict"
        rest = urlencode([(k, v) for k, values in query.items() if k != "token" for v in values])
        location = str(scope.get("path") or "/") + (f"?{rest}" if rest else "")
        headers = [
            (b"location", location.encode("utf-8")),
            (b"set-cookie", cookie.encode("latin-1")),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


async def _deny(send: Send, extra: dict[str, str]) -> None:
    body = b"authentication required (see the dashboard's --auth option)\n"
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    headers += [(k.encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})
