"""URL helpers shared by brokers, backends and the CLI."""

from __future__ import annotations

__all__ = ["redact_url"]


def redact_url(url: str) -> str:
    """Hide the password in `url` (`redis://:***@host/0`), for banners and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    if ":" in credentials:
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
