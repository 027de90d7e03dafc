"""Task call ↔ `Message`, Celery task protocol v2 (spec §1).

`encode_task` writes every header a stock Celery producer writes, with JSON nulls for
unset values, a 3-element body `[args, kwargs, embed]`, `correlation_id` = task id and
`timelimit` hard-first. `decode_task` reads v2, v1 and hybrid messages, tolerates missing
headers and 2-element bodies, and turns every defect into one specific exception that
names it, so the worker can dead-letter the message with that reason.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from celeriac._time import UTC, from_iso, to_iso
from celeriac.exceptions import InvalidTaskError, MessageTooLarge
from celeriac.protocol.message import Message
from celeriac.protocol.serializers import compress, decompress, dumps, loads

__all__ = [
    "PROTOCOL_HEADERS",
    "TaskCall",
    "decode_task",
    "encode_task",
    "origin_nodename",
    "signature_dicts",
]

# Headers that belong to the protocol; everything else is a user's custom header.
PROTOCOL_HEADERS = frozenset(
    {
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
        "compression",
        "meth",
        "redelivered",
    }
)
# Reprs in headers are for logs and monitors only; Celery truncates them at 1024.
REPR_MAX = 1024
# An ETA further out than this is taken for a mistake, not a schedule.
MAX_ETA_YEARS = 10
# A dict body with any of these keys is protocol v1 (or a v1 body under v2 headers).
_V1_KEYS = frozenset({"args", "kwargs", "task"})


@dataclass(slots=True)
class TaskCall:
    """One task invocation, as carried by a message (and read back from one)."""

    name: str
    id: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    eta: datetime | None = None
    expires: datetime | None = None
    retries: int = 0
    time_limit: float | None = None
    soft_time_limit: float | None = None
    group: str | None = None
    group_index: int | None = None
    root_id: str | None = None
    parent_id: str | None = None
    shadow: str | None = None
    origin: str | None = None
    ignore_result: bool | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    priority: int | None = None
    delivery_mode: int = 2
    headers: dict[str, Any] = field(default_factory=dict)
    stamped_headers: list[str] | None = None
    stamps: dict[str, Any] = field(default_factory=dict)
    replaced_task_nesting: int = 0
    argsrepr: str | None = None
    kwargsrepr: str | None = None

    @property
    def embed(self) -> dict[str, Any]:
        return {
            "callbacks": self.callbacks,
            "errbacks": self.errbacks,
            "chain": self.chain,
            "chord": self.chord,
        }


def signature_dicts(value: Any) -> list[dict[str, Any]] | None:
    """`callbacks`/`errbacks` from a `link`/`link_error`: one signature or several, as
    plain dicts (None when there are none)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return [dict(value)]
    dicts = [dict(v) for v in value]
    return dicts or None


_origin: tuple[int, str] | None = None


def origin_nodename() -> str:
    """`gen<pid>@<hostname>`, the anonymous node name Celery producers write as `origin`."""
    global _origin
    pid = os.getpid()
    if _origin is None or _origin[0] != pid:
        _origin = (pid, f"gen{pid}@{socket.gethostname()}")
    return _origin[1]


def _truncated_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= REPR_MAX else text[: REPR_MAX - 3] + "..."


def encode_task(
    call: TaskCall,
    *,
    serializer: str = "json",
    compression: str | None = None,
    max_size: int | None = None,
) -> Message:
    """Build the protocol v2 message for `call`.

    Args:
        call: The call to send.
        serializer: Serializer name.
        compression: Compressor name, or None.
        max_size: Largest serialized body in bytes, checked before compression (a worker
            checks both sizes, so a body that compresses well must still fit).

    Raises:
        SerializationError: the arguments cannot be serialized with `serializer`.
        MessageTooLarge: the serialized body is over `max_size`.
    """
    args = list(call.args)
    headers: dict[str, Any] = {
        "lang": "py",
        "task": call.name,
        "id": call.id,
        "shadow": call.shadow,
        "eta": to_iso(call.eta) if call.eta is not None else None,
        "expires": to_iso(call.expires) if call.expires is not None else None,
        "group": call.group,
        "group_index": call.group_index,
        "retries": call.retries,
        # Celery compat: hard limit first, whatever the protocol document says.
        "timelimit": [call.time_limit, call.soft_time_limit],
        "root_id": call.root_id or call.id,
        "parent_id": call.parent_id,
        "argsrepr": call.argsrepr if call.argsrepr is not None else _truncated_repr(tuple(args)),
        "kwargsrepr": call.kwargsrepr
        if call.kwargsrepr is not None
        else _truncated_repr(call.kwargs),
        "origin": call.origin or origin_nodename(),
        "ignore_result": bool(call.ignore_result),
        "replaced_task_nesting": call.replaced_task_nesting,
        "stamped_headers": call.stamped_headers,
        "stamps": call.stamps,
    }
    if call.headers:
        for key, value in call.headers.items():
            if key not in PROTOCOL_HEADERS:
                headers[key] = value
    body, content_type, content_encoding = dumps([args, call.kwargs, call.embed], serializer)
    if max_size is not None and len(body) > max_size:
        raise MessageTooLarge(
            f"{call.name}[{call.id}]: message body is {len(body)} bytes, over "
            f"task_max_message_size ({max_size}); pass a reference (a key, a URL) instead "
            "of the data"
        )
    if compression:
        body, headers["compression"] = compress(body, compression)
    properties: dict[str, Any] = {
        "correlation_id": call.correlation_id or call.id,
        # Celery compat: an unset reply_to is written as "" (never null).
        "reply_to": call.reply_to or "",
        "delivery_mode": call.delivery_mode,
    }
    if call.priority is not None:
        properties["priority"] = call.priority
    if call.expires is not None:
        # Celery compat: AMQP per-message TTL in whole milliseconds, never negative.
        expires = call.expires
        if expires.tzinfo is None:  # naive means UTC, as in the `expires` header
            expires = expires.replace(tzinfo=UTC)
        remaining = (expires - datetime.now(UTC)).total_seconds()
        properties["expiration"] = str(max(0, int(remaining * 1000)))
    return Message(
        headers=headers,
        body=body,
        properties=properties,
        content_type=content_type,
        content_encoding=content_encoding,
    )


def _parse_instant(value: Any, what: str, *, now: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        instant = from_iso(value)
    except (ValueError, TypeError) as exc:
        raise InvalidTaskError(f"{what} {value!r} is not an ISO-8601 instant") from exc
    if now is not None and now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if now is not None and (instant - now).days > 366 * MAX_ETA_YEARS:
        raise InvalidTaskError(f"{what} {value!r} is more than {MAX_ETA_YEARS} years away")
    return instant


def _number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, int) and value.bit_length() > MAX_SECONDS_BITS)
        or not math.isfinite(value)
        or value < 0
    ):
        shown = (
            f"an integer of {value.bit_length()} bits"
            if isinstance(value, int) and value.bit_length() > 64
            else repr(value)
        )
        raise InvalidTaskError(f"{what} must be a number of seconds >= 0, got {shown}")
    return float(value)


def _optional_str(headers: dict[str, Any], key: str) -> str | None:
    value = headers.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidTaskError(f"header {key!r} must be a string or null, got {value!r}")
    return value


def _count(headers: dict[str, Any], key: str) -> int:
    value = headers.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidTaskError(f"header {key!r} must be a count >= 0, got {value!r}")
    return value


def _text_or_none(value: Any) -> str | None:
    # For headers that only feed logs and monitors: a wrong type is dropped, not fatal.
    return value if isinstance(value, str) else None


# An integer number of seconds with more bits than this does not fit in a float.
MAX_SECONDS_BITS = 1000
# Deepest nesting of header values measured (a deeper header is refused).
MAX_HEADER_DEPTH = 100


def _check_headers(headers: dict[str, Any], max_size: int) -> None:
    """Refuse headers larger than `max_size` (as JSON, roughly) or nested too deep."""
    try:
        size = len(orjson.dumps(headers, default=repr))
    except TypeError:
        # Integers past 64 bits, nesting orjson will not follow: measure by hand.
        size = _size_of(headers, MAX_HEADER_DEPTH)
    if size > max_size:
        raise MessageTooLarge(
            f"message headers are about {size} bytes, over task_max_message_size ({max_size})"
        )


def _size_of(value: Any, depth: int) -> int:
    if depth <= 0:
        raise InvalidTaskError(f"message headers are nested more than {MAX_HEADER_DEPTH} deep")
    if isinstance(value, dict):
        return 2 + sum(
            _size_of(key, depth - 1) + _size_of(item, depth - 1) + 2 for key, item in value.items()
        )
    if isinstance(value, list | tuple):
        return 2 + sum(_size_of(item, depth - 1) + 1 for item in value)
    if isinstance(value, str | bytes):
        return len(value) + 2
    if isinstance(value, int):
        return value.bit_length() // 3 + 2
    return 16


def _decode_body(message: Message, *, accept: frozenset[str], max_size: int | None) -> Any:
    body = message.body
    if max_size is not None and len(body) > max_size:
        raise MessageTooLarge(
            f"message body is {len(body)} bytes, over task_max_message_size ({max_size})"
        )
    kind = message.headers.get("compression")
    if kind:
        # Bounded: a small body that would inflate past max_size is refused while inflating.
        body = decompress(body, str(kind), max_size=max_size)
    return loads(body, message.content_type, accept=accept)


def _sig_list(value: Any, what: str) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise InvalidTaskError(f"embed {what} must be a list of signatures, got {value!r}")
    return value


def decode_task(
    message: Message,
    *,
    accept: frozenset[str],
    max_size: int | None = None,
    now: datetime | None = None,
) -> TaskCall:
    """Read a task call out of `message` (protocol v2, v1 or hybrid).

    Args:
        message: The received message.
        accept: MIME types the body may have (`accept_content`).
        max_size: Largest body in bytes, before and after decompression; the headers too.
        now: When given, ETAs and expiry times absurdly far from it are refused.

    Raises:
        ContentDisallowed: the content type is not accepted.
        MessageTooLarge: the body or the headers are over `max_size`.
        SerializationError: the body does not decode.
        InvalidTaskError: the message is not a valid task message.
    """
    headers = message.headers if isinstance(message.headers, dict) else {}
    if max_size is not None:
        _check_headers(headers, max_size)
    payload = _decode_body(message, accept=accept, max_size=max_size)

    if isinstance(payload, dict) and not _V1_KEYS.isdisjoint(payload):
        # Protocol v1, or a hybrid (v1 body under v2 headers): fold the body into headers.
        merged = dict(headers)
        for key in (
            "task",
            "id",
            "eta",
            "expires",
            "retries",
            "group",
            "group_index",
            "timelimit",
            "root_id",
            "parent_id",
        ):
            if merged.get(key) is None and payload.get(key) is not None:
                merged[key] = payload[key]
        if merged.get("group") is None and payload.get("taskset") is not None:
            merged["group"] = payload["taskset"]
        headers = merged
        args, kwargs = payload.get("args"), payload.get("kwargs")
        embed: Any = {
            "callbacks": payload.get("callbacks"),
            "errbacks": payload.get("errbacks"),
            "chord": payload.get("chord"),
            "chain": None,
        }
    elif isinstance(payload, list | tuple) and len(payload) in (2, 3):
        args, kwargs = payload[0], payload[1]
        # A 2-element body crashes a stock worker; we accept it as having no embed.
        embed = payload[2] if len(payload) == 3 else None
    else:
        raise InvalidTaskError(
            "body must be [args, kwargs, embed] (protocol v2) or a dict with 'args' "
            f"(protocol v1), got {type(payload).__name__}"
        )

    name = headers.get("task")
    task_id = headers.get("id")
    if not isinstance(name, str) or not name:
        raise InvalidTaskError("message has no 'task' header naming the task")
    if not isinstance(task_id, str) or not task_id:
        raise InvalidTaskError(f"message for {name} has no 'id' header")
    if args is None:
        args = []
    if kwargs is None:
        kwargs = {}
    if not isinstance(args, list | tuple):
        raise InvalidTaskError(f"args of {name}[{task_id}] must be a list, got {args!r}")
    if not isinstance(kwargs, dict):
        raise InvalidTaskError(f"kwargs of {name}[{task_id}] must be an object, got {kwargs!r}")
    if not all(isinstance(key, str) for key in kwargs):
        raise InvalidTaskError(f"kwargs of {name}[{task_id}] must have string keys")
    if embed is None:
        embed = {}
    if not isinstance(embed, dict):
        raise InvalidTaskError(f"embed of {name}[{task_id}] must be an object, got {embed!r}")

    timelimit = headers.get("timelimit")
    hard = soft = None
    if isinstance(timelimit, list | tuple) and len(timelimit) == 2:
        hard = _number(timelimit[0], "time limit")
        soft = _number(timelimit[1], "soft time limit")
    elif timelimit is not None:
        raise InvalidTaskError(f"timelimit must be [hard, soft], got {timelimit!r}")

    retries = _count(headers, "retries")
    group_index = headers.get("group_index")
    if group_index is not None and (
        isinstance(group_index, bool) or not isinstance(group_index, int)
    ):
        raise InvalidTaskError(f"group_index must be an integer, got {group_index!r}")
    chord = embed.get("chord")
    if chord is not None and not isinstance(chord, dict):
        raise InvalidTaskError(f"embed chord must be a signature, got {chord!r}")
    stamps = headers.get("stamps")
    stamped_headers = headers.get("stamped_headers")
    if stamped_headers is not None and (
        not isinstance(stamped_headers, list)
        or not all(isinstance(item, str) for item in stamped_headers)
    ):
        raise InvalidTaskError(f"stamped_headers must be a list of names, got {stamped_headers!r}")
    ignore_result = headers.get("ignore_result")
    custom = {k: v for k, v in headers.items() if k not in PROTOCOL_HEADERS}
    props = message.properties if isinstance(message.properties, dict) else {}
    priority = props.get("priority")
    delivery_mode = props.get("delivery_mode")
    return TaskCall(
        name=name,
        id=task_id,
        args=list(args),
        kwargs=kwargs,
        callbacks=_sig_list(embed.get("callbacks"), "callbacks"),
        errbacks=_sig_list(embed.get("errbacks"), "errbacks"),
        chain=_sig_list(embed.get("chain"), "chain"),
        chord=chord,
        eta=_parse_instant(headers.get("eta"), "eta", now=now),
        expires=_parse_instant(headers.get("expires"), "expires", now=None),
        retries=retries,
        time_limit=hard,
        soft_time_limit=soft,
        group=_optional_str(headers, "group"),
        group_index=group_index,
        root_id=_optional_str(headers, "root_id"),
        parent_id=_optional_str(headers, "parent_id"),
        shadow=_optional_str(headers, "shadow"),
        origin=_text_or_none(headers.get("origin")),
        ignore_result=ignore_result if isinstance(ignore_result, bool) else None,
        # Celery writes "" for "no reply address".
        reply_to=_text_or_none(props.get("reply_to")) or None,
        correlation_id=_text_or_none(props.get("correlation_id")),
        priority=priority if isinstance(priority, int) and not isinstance(priority, bool) else None,
        delivery_mode=delivery_mode if delivery_mode in (1, 2) else 2,
        headers=custom,
        stamped_headers=stamped_headers,
        stamps=stamps if isinstance(stamps, dict) else {},
        replaced_task_nesting=_count(headers, "replaced_task_nesting"),
        argsrepr=_text_or_none(headers.get("argsrepr")),
        kwargsrepr=_text_or_none(headers.get("kwargsrepr")),
    )
