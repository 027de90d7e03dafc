"""Messages for the codec tests: the constants, the calls compared with stock Celery, and
the builders of messages (ours, and stock Celery's through kombu)."""

# kombu and Celery (the oracles here) ship no type hints.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import kombu.compression
import kombu.serialization

from celeriac.protocol.codec import TaskCall
from celeriac.protocol.message import Message

if TYPE_CHECKING:
    from celery import Celery

JSON = frozenset({"application/json"})
MSGPACK = frozenset({"application/x-msgpack"})
UTC = timezone.utc
ETA = datetime(2030, 11, 24, 4, 57, 13, 295631, tzinfo=UTC)
EXPIRES = datetime(2030, 11, 25, 0, 0, tzinfo=timezone(timedelta(hours=2)))

# Spec §1.2: every header a stock producer writes (nulls allowed).
SPEC_HEADERS = {
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
}
SIG = {
    "task": "proj.mul",
    "args": [10],
    "kwargs": {},
    "options": {"task_id": "c1"},
    "subtask_type": None,
    "immutable": False,
}


def celery_message(
    celery_app: Celery,
    *,
    serializer: str = "json",
    compression: str | None = None,
    **call: Any,
) -> Message:
    """The message stock Celery builds and kombu serializes for `call`."""
    headers, properties, body, _ = celery_app.amqp.as_task_v2(**call)
    content_type, encoding, data = kombu.serialization.dumps(body, serializer=serializer)
    raw = data.encode() if isinstance(data, str) else data
    headers = dict(headers)
    if compression:
        raw, headers["compression"] = kombu.compression.compress(raw, compression)
    return Message(
        headers=headers,
        body=raw,
        properties=dict(properties),
        content_type=content_type,
        content_encoding=encoding,
    )


def message(headers: dict[str, Any], body: Any, **kwargs: Any) -> Message:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Message(headers=headers, body=raw, **kwargs)


def body_of(msg: Message) -> Any:
    return json.loads(msg.body)


def minimal(**headers: Any) -> dict[str, Any]:
    return {"task": "proj.add", "id": "t1", **headers}


# -- encode compared with stock Celery ---------------------------------------------------------

CALLS: list[dict[str, Any]] = [
    {"args": (2, 2)},
    {"args": (1, "x"), "kwargs": {"k": [1, {"n": None}]}},
    {
        "args": (1,),
        "eta": ETA,
        "expires": EXPIRES,
        "time_limit": 30,
        "soft_time_limit": 10,
        "group_id": "g1",
        "group_index": 2,
        "root_id": "r1",
        "parent_id": "p1",
        "shadow": "display",
        "retries": 3,
        "reply_to": "reply-1",
        "ignore_result": True,
        "replaced_task_nesting": 1,
    },
    {"callbacks": [SIG], "errbacks": [SIG], "chain": [SIG], "chord": SIG},
    {"stamped_headers": ["on_behalf"], "on_behalf": "me"},
]


def our_call(task_id: str, name: str, spec: dict[str, Any]) -> TaskCall:
    stamped = spec.get("stamped_headers")
    return TaskCall(
        name,
        task_id,
        list(spec.get("args", ())),
        dict(spec.get("kwargs", {})),
        callbacks=spec.get("callbacks"),
        errbacks=spec.get("errbacks"),
        chain=spec.get("chain"),
        chord=spec.get("chord"),
        eta=spec.get("eta"),
        expires=spec.get("expires"),
        retries=spec.get("retries", 0),
        time_limit=spec.get("time_limit"),
        soft_time_limit=spec.get("soft_time_limit"),
        group=spec.get("group_id"),
        group_index=spec.get("group_index"),
        root_id=spec.get("root_id"),
        parent_id=spec.get("parent_id"),
        shadow=spec.get("shadow"),
        ignore_result=spec.get("ignore_result", False),
        reply_to=spec.get("reply_to"),
        stamped_headers=stamped,
        stamps={key: spec[key] for key in stamped or []},
        replaced_task_nesting=spec.get("replaced_task_nesting", 0),
    )
