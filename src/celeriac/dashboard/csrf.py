"""CSRF protection for the dashboard's actions (revoke, rate limit, replay, purge).

Actions are POST only. Each browser gets a random token in a SameSite=Strict cookie;
every form carries the same token in a hidden field, and a POST whose field does not
match its cookie (or that comes from another origin) is refused with 403. A page on
another site can neither read the cookie nor make the browser send it.
"""

from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["COOKIE", "FIELD", "check", "remember", "token_for"]

# The cookie and the form field holding the token.
COOKIE = "celeriac_csrf"
FIELD = "csrf_token"


def token_for(request: Request) -> str:
    """The browser's token, or a new one (`remember` sets it on the response)."""
    token = request.cookies.get(COOKIE, "")
    if len(token) >= 32:
        return token
    new: str | None = getattr(request.state, "csrf_new", None)
    if new is None:
        new = request.state.csrf_new = secrets.token_urlsafe(32)
    return new


def remember(request: Request, response: Response) -> None:
    """Set the cookie when `token_for` made a new token for this request."""
    new = getattr(request.state, "csrf_new", None)
    if new:
        response.set_cookie(COOKIE, new, httponly=True, samesite="strict", path="/")


def check(request: Request, submitted: str) -> None:
    """Refuse a POST whose token or origin is wrong.

    Raises:
        HTTPException: 403, naming what was wrong.
    """
    origin = request.headers.get("origin")
    if origin and origin != "null":
        expected = request.headers.get("host", "")
        if urlsplit(origin).netloc != expected:
            raise HTTPException(403, f"cross-origin POST from {origin} refused")
    cookie = request.cookies.get(COOKIE, "")
    if not cookie or not submitted or not hmac.compare_digest(cookie, submitted):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
