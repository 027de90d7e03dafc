"""The transport-neutral message envelope: headers, properties and a serialized body."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, final

__all__ = ["Message"]


@final
@dataclass(frozen=True, slots=True)
class Message:
    """One message as it travels: protocol headers, AMQP-style properties, body bytes.

    `properties` holds `correlation_id`, `reply_to`, `delivery_mode`, `priority` and
    `expiration` as Celery writes them; transports add their own bookkeeping elsewhere.
    """

    headers: dict[str, Any]
    body: bytes
    properties: dict[str, Any] = field(default_factory=dict)
    content_type: str = "application/json"
    content_encoding: str = "utf-8"

    @property
    def task_id(self) -> str | None:
        """The task id from the headers (protocol v2), if any."""
        value = self.headers.get("id")
        return value if isinstance(value, str) else None

    @property
    def task_name(self) -> str | None:
        """The task name from the headers (protocol v2), if any."""
        value = self.headers.get("task")
        return value if isinstance(value, str) else None

    @property
    def priority(self) -> int | None:
        """The `priority` property, if it is an integer."""
        value = self.properties.get("priority")
        return value if isinstance(value, int) and not isinstance(value, bool) else None
