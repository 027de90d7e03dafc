"""URL helpers shared by brokers, backends and the CLI."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["is_secret_name", "redact", "redact_url"]

# Query parameters that carry secrets (redis-py and py-amqp read some of these).
_SECRET_PARAMETERS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "secret",
        "token",
        "access_token",
        "sentinel_password",
        "ssl_password",
    }
)
# Option and setting names whose values are hidden wherever they are printed (the way
# Celery's `humanize` hides them): passwords, tokens, keys, signatures.
_SECRET_NAME = re.compile(
    r"pass|secret|token|signature|(?<!routing_)key(?!s?_?prefix)", re.IGNORECASE
)
MASK = "***"


def is_secret_name(name: str) -> bool:
    """True when an option or setting called `name` may hold a secret."""
    return bool(_SECRET_NAME.search(name))


def redact(value: Any, name: str = "") -> Any:
    """`value` ready to print: URLs without passwords, secret-named entries of dicts
    (at any depth) replaced by `***`. `name` is the setting or option that holds it."""
    if name and is_secret_name(name) and value not in (None, "", False):
        return MASK
    if isinstance(value, str):
        return redact_url(value) if "://" in value else value
    if isinstance(value, Mapping):
        return {key: redact(item, str(key)) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(item) for item in value)
    return value


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
    if equals and (key.lower() in _SECRET_PARAMETERS or is_secret_name(key)):
        return f"{key}={MASK}"
    return item
