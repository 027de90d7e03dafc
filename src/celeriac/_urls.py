"""URL helpers shared by brokers, backends and the CLI."""

from __future__ import annotations

import re

__all__ = ["redact_url"]

# Query parameters that carry secrets (redis-py and py-amqp read some of these).
_SECRET_PARAMETERS = frozenset(
    {"password", "passwd", "pass", "secret", "token", "access_token", "sentinel_password"}
)
MASK = "***"


def redact_url(url: str) -> str:
    """Hide the password in `url` (`redis://:***@host/0`), for banners and logs.

    Also hides secret query parameters (`?password=...`) and handles kombu's
    `;`-separated failover lists. When in doubt it hides too much, never too little.
    """
    parts = url.split(";")
    # A failover list only when every part is a URL: a ";" may sit inside a password.
    if len(parts) > 1 and all("://" in part for part in parts):
        return ";".join(redact_url(part) for part in parts)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # Credentials end at the last "@" of the host part (as urllib reads it). A password
    # holding an unescaped "/", "?" or "#" would end the host part early, so then look
    # through the whole rest.
    host_part = re.split(r"[/?#]", rest, maxsplit=1)[0]
    search_in = host_part if "@" in host_part else rest
    if "@" in search_in:
        at = search_in.rindex("@")
        credentials, remainder = rest[:at], rest[at + 1 :]
        if ":" in credentials:
            user = credentials.split(":", 1)[0]
            rest = f"{user}:{MASK}@{remainder}"
    rest, hash_sign, fragment = rest.partition("#")
    rest, question_mark, query = rest.partition("?")
    if query:
        query = "&".join(_redact_parameter(item) for item in query.split("&"))
    return f"{scheme}://{rest}{question_mark}{query}{hash_sign}{fragment}"


def _redact_parameter(item: str) -> str:
    key, equals, _ = item.partition("=")
    if equals and key.lower() in _SECRET_PARAMETERS:
        return f"{key}={MASK}"
    return item
