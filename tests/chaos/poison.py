"""Poison messages for the reliability suite, and how to put them straight into a broker.

Each `Poison` is a raw message (headers, properties, body, content type and encoding),
never built by celeriac's producer: `inject` writes it in the broker's own layout, the
way a buggy or hostile producer would:

- Redis: a kombu JSON envelope LPUSHed on the queue's list (body base64 in the envelope,
  as kombu writes it), or raw bytes where the envelope itself is the poison;
- RabbitMQ: `basic_publish` on the default exchange with AMQP properties and headers;
- SQLite: a row in the broker's `message` table.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Poison", "inject", "task_headers", "v2_body"]

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_headers(task_id: str, name: str = "tasks.work", **extra: Any) -> dict[str, Any]:
    """Protocol v2 headers as Celery 5 writes them."""
    return {
        "lang": "py",
        "task": name,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "",
        "kwargsrepr": "",
        "origin": "poison@chaos",
        "ignore_result": False,
        **extra,
    }


def v2_body(args: list[Any], kwargs: dict[str, Any] | None = None) -> bytes:
    return json.dumps([args, kwargs or {}, EMBED]).encode()


@dataclass
class Poison:
    """One raw message and what the worker must say about it.

    `reason` is a fragment the worker's log line and the dead letter's reason both
    contain; `raw` replaces the whole broker entry (Redis envelope, SQLite headers
    column) where that is the poison.
    """

    name: str
    task_id: str
    reason: str
    headers: dict[str, Any] = field(default_factory=dict)
    body: bytes = b""
    content_type: str | None = "application/json"
    content_encoding: str | None = "utf-8"
    raw: bytes | None = None
    dead_lettered: bool = True
    # False where the message carries no id at all (an envelope that is not JSON).
    named: bool = True

    @property
    def properties(self) -> dict[str, Any]:
        # Celery sets the correlation id to the task id; the reply_to is left out.
        return {"correlation_id": self.task_id, "delivery_mode": 2}


def inject(kind: str, poison: Poison, *, queue: str, url: str | None, directory: Path) -> None:
    """Write `poison` into queue `queue` of the test's broker, in the broker's layout."""
    if kind == "redis":
        _inject_redis(poison, queue=queue, url=url or "")
    elif kind == "amqp":
        _inject_amqp(poison, queue=queue, url=url or "")
    else:
        _inject_sqlite(poison, queue=queue, path=directory / "celeriac.db")


def _redis_envelope(poison: Poison, queue: str) -> bytes:
    if poison.raw is not None:
        return poison.raw
    envelope = {
        "body": base64.b64encode(poison.body).decode("ascii"),
        "content-encoding": poison.content_encoding,
        "content-type": poison.content_type,
        "headers": poison.headers,
        "properties": {
            **poison.properties,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    if poison.name == "bad base64":
        envelope["body"] = "%%% not base64 at all %%%="
    return json.dumps(envelope).encode()


def _inject_redis(poison: Poison, *, queue: str, url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        prefix = os.environ.get("TEST_KEY_PREFIX", "")
        # Priority 0 lives on the list named after the queue (kombu's layout).
        client.lpush(prefix + queue, _redis_envelope(poison, queue))
    finally:
        client.close()


def _inject_amqp(poison: Poison, *, queue: str, url: str) -> None:
    import amqp

    parsed = urlparse(url)
    vhost = unquote(parsed.path[1:]) if len(parsed.path) > 1 else "/"
    connection = amqp.Connection(
        host=f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 5672}",
        userid=unquote(parsed.username or "guest"),
        password=unquote(parsed.password or "guest"),
        virtual_host=vhost or "/",
    )
    connection.connect()
    try:
        channel = connection.channel()
        properties: dict[str, Any] = {
            "application_headers": poison.headers,
            "correlation_id": poison.task_id,
            "delivery_mode": 2,
        }
        if poison.content_type is not None:
            properties["content_type"] = poison.content_type
        if poison.content_encoding is not None:
            properties["content_encoding"] = poison.content_encoding
        channel.basic_publish(
            amqp.Message(poison.body, **properties), exchange="", routing_key=queue
        )
        channel.close()
    finally:
        connection.close()


def _inject_sqlite(poison: Poison, *, queue: str, path: Path) -> None:
    headers = poison.raw if poison.raw is not None else json.dumps(poison.headers).encode()
    connection = sqlite3.connect(path, timeout=30)
    try:
        with connection:
            connection.execute(
                "INSERT INTO message (queue, priority, due, exchange, routing_key, "
                "content_type, content_encoding, headers, properties, body) "
                "VALUES (?, 0, NULL, '', ?, ?, ?, ?, ?, ?)",
                (
                    queue,
                    queue,
                    poison.content_type or "",
                    poison.content_encoding or "",
                    headers,
                    json.dumps(poison.properties).encode(),
                    poison.body,
                ),
            )
    finally:
        connection.close()
    # Wake consumers that wait on the database file (they poll it otherwise).
    os.utime(path, (time.time(), time.time()))
