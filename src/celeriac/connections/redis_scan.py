"""Reading the values of the keys under a prefix: SCAN (no order), then MGET in batches."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

__all__ = ["glob_escape", "read_prefixed"]

# Keys one MGET reads.
BATCH = 500


def glob_escape(text: str) -> str:
    """`text` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def read_prefixed(client: redis.Redis, prefix: str, *, cap: int) -> list[tuple[str, bytes | str]]:
    """(key without `prefix`, value) of up to `cap` keys starting with `prefix`, in
    SCAN's order; keys gone between the SCAN and the MGET are left out."""
    keys: list[bytes | str] = []
    for key in client.scan_iter(match=glob_escape(prefix) + "*", count=1000):
        keys.append(key)
        if len(keys) >= cap:
            break
    found: list[tuple[str, bytes | str]] = []
    for start in range(0, len(keys), BATCH):
        batch = keys[start : start + BATCH]
        for key, value in zip(batch, client.mget(batch), strict=True):
            if value is not None:
                name = key.decode("utf-8") if isinstance(key, bytes) else key
                found.append((name[len(prefix) :], value))
    return found
