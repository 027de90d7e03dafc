"""Task messages: `encode_task` / `decode_task` against the spec (§1.1-1.6, §1.13) and
against what stock Celery 5.7's `app.amqp.as_task_v2` builds for the same call."""

# kombu and Celery (the oracles here) ship no type hints.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import json
import os
import time as time_module
import uuid
import zlib
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import kombu.compression
import kombu.serialization
import msgpack
import pytest
from celery import Celery
from hypothesis import given, settings
from hypothesis import strategies as st

from celeriac.exceptions import (
    ContentDisallowed,
    InvalidTaskError,
    MessageTooLarge,
    SerializationError,
)
from celeriac.protocol.codec import TaskCall, decode_task, encode_task, origin_nodename
from celeriac.protocol.message import Message

if TYPE_CHECKING:
    from collections.abc import Iterator

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


@pytest.fixture(scope="module")
def celery_app() -> Celery:
    """A stock Celery app, used only to build reference messages."""
    return Celery("oracle", set_as_current=False)


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


# -- encode: the headers of spec §1.2 -------------------------------------------------------


def test_encode_writes_every_header_of_spec_1_2() -> None:
    msg = encode_task(TaskCall("proj.add", "t1", [2, 2]))
    assert set(msg.headers) == SPEC_HEADERS


def test_encode_writes_unset_headers_as_null() -> None:
    headers = encode_task(TaskCall("proj.add", "t1")).headers
    for key in ("shadow", "eta", "expires", "group", "group_index", "parent_id"):
        assert key in headers
        assert headers[key] is None
    assert headers["stamped_headers"] is None
    assert headers["timelimit"] == [None, None]


def test_encode_writes_fixed_headers() -> None:
    headers = encode_task(TaskCall("proj.add", "t1")).headers
    assert headers["lang"] == "py"
    assert headers["task"] == "proj.add"
    assert headers["id"] == "t1"
    assert headers["retries"] == 0
    assert headers["ignore_result"] is False
    assert headers["replaced_task_nesting"] == 0
    assert headers["stamps"] == {}


def test_encode_writes_timelimit_hard_first() -> None:
    call = TaskCall("proj.add", "t1", time_limit=30, soft_time_limit=10)
    assert encode_task(call).headers["timelimit"] == [30, 10]


def test_encode_writes_eta_and_expires_as_iso8601_with_offset() -> None:
    headers = encode_task(TaskCall("proj.add", "t1", eta=ETA, expires=EXPIRES)).headers
    assert headers["eta"] == "2030-11-24T04:57:13.295631+00:00"
    assert headers["expires"] == "2030-11-25T00:00:00+02:00"


def test_encode_writes_a_naive_eta_as_utc_with_offset() -> None:
    headers = encode_task(TaskCall("proj.add", "t1", eta=datetime(2030, 1, 2, 3, 4, 5))).headers
    assert headers["eta"] == "2030-01-02T03:04:05+00:00"


def test_encode_defaults_root_id_to_the_task_id() -> None:
    assert encode_task(TaskCall("proj.add", "t1")).headers["root_id"] == "t1"


def test_encode_keeps_a_given_root_id_and_parent_id() -> None:
    headers = encode_task(TaskCall("proj.add", "t1", root_id="r", parent_id="p")).headers
    assert (headers["root_id"], headers["parent_id"]) == ("r", "p")


def test_encode_writes_argsrepr_and_kwargsrepr_like_celery() -> None:
    headers = encode_task(TaskCall("proj.add", "t1", [2, 2], {"a": "b"})).headers
    assert headers["argsrepr"] == "(2, 2)"
    assert headers["kwargsrepr"] == "{'a': 'b'}"


def test_encode_truncates_reprs_at_1024_characters() -> None:
    headers = encode_task(TaskCall("proj.add", "t1", ["x" * 5000])).headers
    assert len(headers["argsrepr"]) == 1024
    assert headers["argsrepr"].endswith("...")


def test_encode_writes_the_anonymous_origin_nodename() -> None:
    origin = encode_task(TaskCall("proj.add", "t1")).headers["origin"]
    assert origin == origin_nodename()
    assert origin.startswith(f"gen{os.getpid()}@")


# -- encode: properties and body -------------------------------------------------------------


def test_encode_sets_correlation_id_to_the_task_id() -> None:
    assert encode_task(TaskCall("proj.add", "t1")).properties["correlation_id"] == "t1"


def test_encode_sets_reply_to() -> None:
    assert encode_task(TaskCall("proj.add", "t1", reply_to="r-1")).properties["reply_to"] == "r-1"


def test_encode_writes_an_unset_reply_to_as_empty_string_like_celery(celery_app: Celery) -> None:
    ours = encode_task(TaskCall("proj.add", "t1")).properties["reply_to"]
    theirs = celery_app.amqp.as_task_v2("t1", "proj.add").properties["reply_to"]
    assert ours == theirs == ""


def test_encode_sets_priority_property_only_when_given() -> None:
    assert "priority" not in encode_task(TaskCall("proj.add", "t1")).properties
    assert encode_task(TaskCall("proj.add", "t1", priority=0)).properties["priority"] == 0
    assert encode_task(TaskCall("proj.add", "t1", priority=7)).properties["priority"] == 7


def test_encode_sets_expiration_in_milliseconds() -> None:
    expires = datetime.now(UTC) + timedelta(seconds=60)
    properties = encode_task(TaskCall("proj.add", "t1", expires=expires)).properties
    assert 55_000 <= int(properties["expiration"]) <= 60_000


def test_encode_sets_no_expiration_without_expires() -> None:
    assert "expiration" not in encode_task(TaskCall("proj.add", "t1")).properties


def test_encode_never_writes_a_negative_expiration() -> None:
    expires = datetime.now(UTC) - timedelta(hours=1)
    assert encode_task(TaskCall("proj.add", "t1", expires=expires)).properties["expiration"] == "0"


@pytest.fixture
def tokyo_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time_module.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time_module.tzset()


@pytest.mark.usefixtures("tokyo_local_time")
def test_encode_expiration_of_a_naive_expires_counts_it_as_utc() -> None:
    expires = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=60)
    msg = encode_task(TaskCall("proj.add", "t1", expires=expires))
    assert msg.headers["expires"].endswith("+00:00")
    assert 55_000 <= int(msg.properties["expiration"]) <= 60_000


def test_encode_writes_a_three_element_body() -> None:
    msg = encode_task(TaskCall("proj.add", "t1", [2, 2], {"z": 1}))
    assert body_of(msg) == [
        [2, 2],
        {"z": 1},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]
    assert (msg.content_type, msg.content_encoding) == ("application/json", "utf-8")


def test_encode_writes_canvas_options_into_embed() -> None:
    call = TaskCall("proj.add", "t1", callbacks=[SIG], errbacks=[SIG], chain=[SIG, SIG], chord=SIG)
    assert body_of(encode_task(call))[2] == {
        "callbacks": [SIG],
        "errbacks": [SIG],
        "chain": [SIG, SIG],
        "chord": SIG,
    }


def test_encode_merges_custom_headers() -> None:
    call = TaskCall("proj.add", "t1", headers={"tenant": "acme", "trace": [1, 2]})
    headers = encode_task(call).headers
    assert headers["tenant"] == "acme"
    assert headers["trace"] == [1, 2]


def test_encode_never_lets_custom_headers_override_protocol_headers() -> None:
    custom = {"id": "evil", "task": "os.system", "retries": 99, "eta": "x", "compression": "z"}
    headers = encode_task(TaskCall("proj.add", "t1", headers=custom)).headers
    assert headers["id"] == "t1"
    assert headers["task"] == "proj.add"
    assert headers["retries"] == 0
    assert headers["eta"] is None
    assert "compression" not in headers


def test_encode_compresses_the_body_and_names_the_mime_type() -> None:
    msg = encode_task(TaskCall("proj.add", "t1", [2, 2]), compression="zlib")
    assert msg.headers["compression"] == "application/x-gzip"
    assert json.loads(zlib.decompress(msg.body))[0] == [2, 2]


def test_encode_with_msgpack_sets_its_content_type() -> None:
    msg = encode_task(TaskCall("proj.add", "t1", [b"\x00"]), serializer="msgpack")
    assert (msg.content_type, msg.content_encoding) == ("application/x-msgpack", "binary")
    assert msgpack.unpackb(msg.body)[0] == [b"\x00"]


def test_encode_refuses_unserializable_arguments() -> None:
    with pytest.raises(SerializationError):
        encode_task(TaskCall("proj.add", "t1", [object()]))


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


def _our_call(task_id: str, name: str, spec: dict[str, Any]) -> TaskCall:
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


@pytest.mark.parametrize("spec", CALLS)
def test_encode_headers_match_celery_as_task_v2(celery_app: Celery, spec: dict[str, Any]) -> None:
    ours = encode_task(_our_call("t1", "proj.add", spec))
    theirs = celery_message(celery_app, task_id="t1", name="proj.add", **spec)
    assert ours.headers == theirs.headers


@pytest.mark.parametrize("spec", CALLS)
def test_encode_body_matches_celery_as_task_v2(celery_app: Celery, spec: dict[str, Any]) -> None:
    ours = encode_task(_our_call("t1", "proj.add", spec))
    theirs = celery_message(celery_app, task_id="t1", name="proj.add", **spec)
    assert body_of(ours) == body_of(theirs)
    assert ours.content_type == theirs.content_type


@pytest.mark.parametrize("spec", CALLS)
def test_encode_properties_match_celery_as_task_v2(
    celery_app: Celery, spec: dict[str, Any]
) -> None:
    ours = encode_task(_our_call("t1", "proj.add", spec)).properties
    theirs = celery_message(celery_app, task_id="t1", name="proj.add", **spec).properties
    assert {key: ours[key] for key in theirs} == theirs


# -- decode what stock Celery sends --------------------------------------------------------------


@pytest.mark.parametrize("spec", CALLS)
def test_decode_reads_celery_messages_as_the_call_that_made_them(
    celery_app: Celery, spec: dict[str, Any]
) -> None:
    msg = celery_message(celery_app, task_id="t1", name="proj.add", **spec)
    expected = _our_call("t1", "proj.add", spec)
    call = decode_task(msg, accept=JSON)
    assert call.name == "proj.add"
    assert call.id == "t1"
    assert call.args == expected.args
    assert call.kwargs == expected.kwargs
    assert call.embed == expected.embed
    assert call.eta == expected.eta
    assert call.expires == expected.expires
    assert (call.time_limit, call.soft_time_limit) == (
        expected.time_limit,
        expected.soft_time_limit,
    )
    assert call.retries == expected.retries
    assert (call.group, call.group_index) == (expected.group, expected.group_index)
    assert call.root_id == (expected.root_id or "t1")
    assert call.parent_id == expected.parent_id
    assert call.shadow == expected.shadow
    assert call.ignore_result is bool(expected.ignore_result)
    assert call.reply_to == expected.reply_to
    assert call.correlation_id == "t1"
    assert call.stamped_headers == expected.stamped_headers
    assert call.stamps == expected.stamps
    assert call.replaced_task_nesting == expected.replaced_task_nesting
    assert call.headers == {}


@pytest.mark.parametrize("spec", CALLS)
def test_decode_reads_celery_messages_the_same_as_ours(
    celery_app: Celery, spec: dict[str, Any]
) -> None:
    theirs = decode_task(celery_message(celery_app, task_id="t1", name="p.a", **spec), accept=JSON)
    ours = decode_task(encode_task(_our_call("t1", "p.a", spec)), accept=JSON)
    assert theirs == ours


@pytest.mark.parametrize("compression", ["zlib", "bzip2", "lzma"])
def test_decode_reads_celery_compressed_messages(celery_app: Celery, compression: str) -> None:
    msg = celery_message(
        celery_app, task_id="t1", name="proj.add", args=(2, 2), compression=compression
    )
    assert decode_task(msg, accept=JSON).args == [2, 2]


def test_decode_reads_celery_msgpack_messages(celery_app: Celery) -> None:
    msg = celery_message(
        celery_app, task_id="t1", name="proj.add", args=(b"\x00", "x"), serializer="msgpack"
    )
    assert decode_task(msg, accept=MSGPACK).args == [b"\x00", "x"]


def test_decode_reads_kombu_type_tags_in_arguments(celery_app: Celery) -> None:
    when = datetime(2024, 1, 2, tzinfo=UTC)
    msg = celery_message(
        celery_app, task_id="t1", name="proj.add", args=(when,), kwargs={"id": uuid.UUID(int=5)}
    )
    call = decode_task(msg, accept=JSON)
    assert call.args == [when]
    assert call.kwargs == {"id": uuid.UUID(int=5)}


def test_decode_reads_celery_countdown_as_eta(celery_app: Celery) -> None:
    before = datetime.now(UTC)
    msg = celery_message(celery_app, task_id="t1", name="proj.add", countdown=30)
    eta = decode_task(msg, accept=JSON).eta
    assert eta is not None
    assert before + timedelta(seconds=29) < eta < before + timedelta(seconds=32)


# -- decode: protocol v1 and hybrid (spec §1.13) --------------------------------------------------


def test_decode_reads_a_celery_protocol_v1_message(celery_app: Celery) -> None:
    headers, _, body, _ = celery_app.amqp.as_task_v1(
        "t1",
        "proj.add",
        args=(2, 2),
        kwargs={"k": 1},
        eta=ETA,
        expires=EXPIRES,
        retries=2,
        group_id="g1",
        group_index=4,
        time_limit=30,
        soft_time_limit=10,
        callbacks=[SIG],
        errbacks=[SIG],
        chord=SIG,
    )
    msg = message(dict(headers), json.loads(kombu.serialization.dumps(body, "json")[2]))
    call = decode_task(msg, accept=JSON)
    assert (call.name, call.id) == ("proj.add", "t1")
    assert (call.args, call.kwargs) == ([2, 2], {"k": 1})
    assert (call.eta, call.expires, call.retries) == (ETA, EXPIRES, 2)
    assert (call.group, call.group_index) == ("g1", 4)
    assert (call.time_limit, call.soft_time_limit) == (30, 10)
    assert call.embed == {"callbacks": [SIG], "errbacks": [SIG], "chain": None, "chord": SIG}


def test_decode_reads_the_v1_taskset_key_as_group() -> None:
    body = {"task": "proj.add", "id": "t1", "args": [], "kwargs": {}, "taskset": "g9"}
    assert decode_task(message({}, body), accept=JSON).group == "g9"


def test_decode_reads_a_v1_body_without_args() -> None:
    body = {"task": "proj.add", "id": "t1", "kwargs": {"a": 1}}
    call = decode_task(message({}, body), accept=JSON)
    assert (call.args, call.kwargs) == ([], {"a": 1})


def test_decode_reads_a_hybrid_message_v2_headers_with_a_v1_body() -> None:
    body = {"args": [1, 2], "kwargs": {"k": "v"}, "callbacks": [SIG], "retries": 5}
    call = decode_task(message(minimal(retries=1, group="g"), body), accept=JSON)
    assert (call.name, call.id, call.args, call.kwargs) == ("proj.add", "t1", [1, 2], {"k": "v"})
    assert call.retries == 1  # the headers win, as in Celery's hybrid_to_proto2
    assert call.group == "g"
    assert call.callbacks == [SIG]


# -- decode: tolerance ---------------------------------------------------------------------------


def test_decode_tolerates_a_two_element_body() -> None:
    call = decode_task(message(minimal(), [[1], {"a": 2}]), accept=JSON)
    assert (call.args, call.kwargs) == ([1], {"a": 2})
    assert call.embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def test_decode_tolerates_a_null_embed() -> None:
    call = decode_task(message(minimal(), [[], {}, None]), accept=JSON)
    assert call.callbacks is None
    assert call.chord is None


def test_decode_tolerates_null_args_and_kwargs() -> None:
    call = decode_task(message(minimal(), [None, None, {}]), accept=JSON)
    assert (call.args, call.kwargs) == ([], {})


def test_decode_tolerates_missing_optional_headers() -> None:
    call = decode_task(message({"task": "proj.add", "id": "t1"}, [[1], {}, {}]), accept=JSON)
    assert call.retries == 0
    assert (call.eta, call.expires) == (None, None)
    assert (call.time_limit, call.soft_time_limit) == (None, None)
    assert call.group_index is None
    assert call.ignore_result is None
    assert call.stamps == {}
    assert call.replaced_task_nesting == 0
    assert call.reply_to is None
    assert call.priority is None
    assert call.delivery_mode == 2


def test_decode_reads_a_single_callback_dict_as_a_list() -> None:
    call = decode_task(message(minimal(), [[], {}, {"callbacks": SIG}]), accept=JSON)
    assert call.callbacks == [SIG]


def test_decode_keeps_custom_headers_apart() -> None:
    call = decode_task(
        message(minimal(tenant="acme", redelivered=True), [[], {}, None]), accept=JSON
    )
    assert call.headers == {"tenant": "acme"}


def test_decode_reads_priority_and_delivery_mode_properties() -> None:
    msg = message(minimal(), [[], {}, None], properties={"priority": 3, "delivery_mode": 1})
    call = decode_task(msg, accept=JSON)
    assert (call.priority, call.delivery_mode) == (3, 1)


def test_decode_reads_an_offset_less_eta_as_utc() -> None:
    call = decode_task(message(minimal(eta="2030-01-02T03:04:05"), [[], {}, None]), accept=JSON)
    assert call.eta == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_decode_reads_an_eta_with_z_suffix() -> None:
    call = decode_task(message(minimal(eta="2030-01-02T03:04:05Z"), [[], {}, None]), accept=JSON)
    assert call.eta == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_decode_accepts_a_far_eta_when_not_given_now() -> None:
    msg = message(minimal(eta="2999-01-01T00:00:00+00:00"), [[], {}, None])
    assert decode_task(msg, accept=JSON).eta == datetime(2999, 1, 1, tzinfo=UTC)


def test_decode_accepts_a_far_expires_even_with_now() -> None:
    msg = message(minimal(expires="2999-01-01T00:00:00+00:00"), [[], {}, None])
    call = decode_task(msg, accept=JSON, now=datetime.now(UTC))
    assert call.expires == datetime(2999, 1, 1, tzinfo=UTC)


# -- decode: rejections ----------------------------------------------------------------------------


def test_decode_rejects_a_message_without_task_header() -> None:
    with pytest.raises(InvalidTaskError, match="no 'task' header"):
        decode_task(message({"id": "t1"}, [[], {}, None]), accept=JSON)


def test_decode_rejects_a_message_without_id_header() -> None:
    with pytest.raises(InvalidTaskError, match=r"proj.add has no 'id' header"):
        decode_task(message({"task": "proj.add"}, [[], {}, None]), accept=JSON)


@pytest.mark.parametrize("body", ["text", 5, None, [], [[]], [[], {}, None, 4], True])
def test_decode_rejects_a_body_that_is_not_a_list_or_dict(body: Any) -> None:
    with pytest.raises(InvalidTaskError, match=r"body must be \[args, kwargs, embed\]"):
        decode_task(message(minimal(), body), accept=JSON)


@pytest.mark.parametrize("args", [5, "ab", {"a": 1}, True])
def test_decode_rejects_args_that_are_not_a_list(args: Any) -> None:
    with pytest.raises(InvalidTaskError, match=r"args of proj.add\[t1\] must be a list"):
        decode_task(message(minimal(), [args, {}, None]), accept=JSON)


@pytest.mark.parametrize("kwargs", [[], [["a", 1]], "a=1", 3])
def test_decode_rejects_kwargs_that_are_not_a_dict(kwargs: Any) -> None:
    with pytest.raises(InvalidTaskError, match=r"kwargs of proj.add\[t1\] must be an object"):
        decode_task(message(minimal(), [[], kwargs, None]), accept=JSON)


def test_decode_rejects_kwargs_with_non_string_keys() -> None:
    body = msgpack.packb([[], {b"raw": 1}, None], use_bin_type=True)
    msg = Message(headers=minimal(), body=body, content_type="application/x-msgpack")
    with pytest.raises(InvalidTaskError, match="string keys"):
        decode_task(msg, accept=MSGPACK)


def test_decode_rejects_v1_kwargs_that_are_not_a_dict() -> None:
    body = {"task": "proj.add", "id": "t1", "args": [], "kwargs": [1]}
    with pytest.raises(InvalidTaskError, match=r"kwargs of proj.add"):
        decode_task(message({}, body), accept=JSON)


@pytest.mark.parametrize("embed", [5, "x", [1]])
def test_decode_rejects_an_embed_that_is_not_an_object(embed: Any) -> None:
    with pytest.raises(InvalidTaskError, match=r"embed of proj.add"):
        decode_task(message(minimal(), [[], {}, embed]), accept=JSON)


@pytest.mark.parametrize(
    "embed",
    [{"callbacks": 5}, {"errbacks": ["x"]}, {"chain": "proj.next"}, {"chord": [SIG]}],
)
def test_decode_rejects_canvas_entries_that_are_not_signatures(embed: dict[str, Any]) -> None:
    with pytest.raises(InvalidTaskError, match="must be a"):
        decode_task(message(minimal(), [[], {}, embed]), accept=JSON)


@pytest.mark.parametrize("header", ["eta", "expires"])
@pytest.mark.parametrize("value", ["tomorrow", "2024-13-01T00:00:00", "", 1700000000, ["x"]])
def test_decode_rejects_a_bad_eta_or_expires(header: str, value: Any) -> None:
    with pytest.raises(InvalidTaskError, match=f"{header} .* is not an ISO-8601 instant"):
        decode_task(message(minimal(**{header: value}), [[], {}, None]), accept=JSON)


def test_decode_rejects_an_eta_more_than_ten_years_away() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    eta = (now + timedelta(days=366 * 10 + 2)).isoformat()
    with pytest.raises(InvalidTaskError, match="more than 10 years away"):
        decode_task(message(minimal(eta=eta), [[], {}, None]), accept=JSON, now=now)


def test_decode_accepts_an_eta_nine_years_away() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    eta = now + timedelta(days=365 * 9)
    msg = message(minimal(eta=eta.isoformat()), [[], {}, None])
    assert decode_task(msg, accept=JSON, now=now).eta == eta


def test_decode_rejects_a_far_eta_at_the_end_of_the_calendar() -> None:
    msg = message(minimal(eta="9999-12-31T23:59:59-05:00"), [[], {}, None])
    with pytest.raises(InvalidTaskError, match="years away"):
        decode_task(msg, accept=JSON, now=datetime.now(UTC))


@pytest.mark.parametrize(
    "timelimit",
    [[1], [1, 2, 3], "30", 30, {"hard": 1}, ["a", None], [None, "10"], [True, None], [-1, None]],
)
def test_decode_rejects_a_timelimit_of_the_wrong_shape(timelimit: Any) -> None:
    with pytest.raises(InvalidTaskError, match=r"time ?limit"):
        decode_task(message(minimal(timelimit=timelimit), [[], {}, None]), accept=JSON)


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_decode_rejects_a_non_finite_time_limit(value: str) -> None:
    timelimit = json.loads(f"[{value}, null]")  # Python's json writes these
    msg = Message(headers=minimal(timelimit=timelimit), body=b"[[], {}, null]")
    with pytest.raises(InvalidTaskError, match="time limit"):
        decode_task(msg, accept=JSON)


@pytest.mark.parametrize("group_index", ["1", 1.5, True, [1]])
def test_decode_rejects_a_non_integer_group_index(group_index: Any) -> None:
    with pytest.raises(InvalidTaskError, match="group_index must be an integer"):
        decode_task(message(minimal(group_index=group_index), [[], {}, None]), accept=JSON)


@pytest.mark.parametrize("retries", ["1", 1.5, True, -1, [0]])
def test_decode_rejects_non_integer_retries(retries: Any) -> None:
    with pytest.raises(InvalidTaskError, match="'retries' must be a count"):
        decode_task(message(minimal(retries=retries), [[], {}, None]), accept=JSON)


@pytest.mark.parametrize("value", ["1", 1.5, -2])
def test_decode_rejects_a_bad_replaced_task_nesting(value: Any) -> None:
    with pytest.raises(InvalidTaskError, match="replaced_task_nesting"):
        decode_task(message(minimal(replaced_task_nesting=value), [[], {}, None]), accept=JSON)


@pytest.mark.parametrize("header", ["group", "root_id", "parent_id", "shadow"])
def test_decode_rejects_a_non_string_id_header(header: str) -> None:
    with pytest.raises(InvalidTaskError, match=f"header '{header}' must be a string"):
        decode_task(message(minimal(**{header: 5}), [[], {}, None]), accept=JSON)


@pytest.mark.parametrize("value", ["s1", [1], {"s1": 1}])
def test_decode_rejects_stamped_headers_that_are_not_a_list_of_names(value: Any) -> None:
    with pytest.raises(InvalidTaskError, match="stamped_headers"):
        decode_task(message(minimal(stamped_headers=value), [[], {}, None]), accept=JSON)


def test_decode_drops_log_only_headers_of_the_wrong_type() -> None:
    headers = minimal(argsrepr=5, kwargsrepr=[1], origin={"x": 1})
    call = decode_task(message(headers, [[], {}, None]), accept=JSON)
    assert (call.argsrepr, call.kwargsrepr, call.origin) == (None, None, None)


def test_decode_rejects_a_body_over_max_size_before_decoding() -> None:
    msg = message(minimal(), b"[" * 2000)
    with pytest.raises(MessageTooLarge, match="2000 bytes, over task_max_message_size"):
        decode_task(msg, accept=JSON, max_size=1000)


def test_decode_rejects_a_body_over_max_size_after_decompression() -> None:
    packer = zlib.compressobj()
    bomb = packer.compress(b"[[], {}, null]")
    bomb += b"".join(packer.compress(b" " * 65536) for _ in range(160)) + packer.flush()
    msg = Message(headers=minimal(compression="application/x-gzip"), body=bomb)
    assert len(msg.body) < 20_000  # 10 MiB once inflated
    with pytest.raises(MessageTooLarge, match="decompressed body is over 1048576 bytes"):
        decode_task(msg, accept=JSON, max_size=1024 * 1024)


def test_decode_reads_a_compressed_body_under_max_size() -> None:
    msg = encode_task(TaskCall("proj.add", "t1", ["x" * 10_000]), compression="zlib")
    assert decode_task(msg, accept=JSON, max_size=20_000).args == ["x" * 10_000]


def test_decode_refuses_a_message_without_content_type() -> None:
    msg = Message(headers=minimal(), body=b"[[], {}, null]", content_type="")
    with pytest.raises(ContentDisallowed, match="no content type"):
        decode_task(msg, accept=JSON)


def test_decode_refuses_a_content_type_not_accepted() -> None:
    msg = encode_task(TaskCall("proj.add", "t1"), serializer="pickle")
    with pytest.raises(ContentDisallowed, match="application/x-python-serialize"):
        decode_task(msg, accept=JSON)


def test_decode_gives_serialization_error_for_an_undecodable_body() -> None:
    with pytest.raises(SerializationError, match="invalid JSON"):
        decode_task(message(minimal(), b"[[], {"), accept=JSON)


def test_decode_gives_serialization_error_for_corrupt_compression() -> None:
    msg = Message(headers=minimal(compression="application/x-gzip"), body=b"not zlib")
    with pytest.raises(SerializationError, match="cannot decompress"):
        decode_task(msg, accept=JSON)


# -- round trip ---------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # msgpack's range
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None)
@given(
    args=st.lists(JSON_VALUES, max_size=4),
    kwargs=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4),
    serializer=st.sampled_from(["json", "msgpack"]),
    compression=st.sampled_from([None, "zlib"]),
)
def test_encode_then_decode_round_trips_any_json_arguments(
    args: list[Any], kwargs: dict[str, Any], serializer: str, compression: str | None
) -> None:
    call = TaskCall(
        "proj.add",
        str(uuid.uuid4()),
        args,
        kwargs,
        eta=ETA,
        time_limit=5.0,
        soft_time_limit=2.5,
        group="g",
        group_index=0,
        reply_to="r",
        priority=4,
        headers={"custom": kwargs},
    )
    msg = encode_task(call, serializer=serializer, compression=compression)
    decoded = decode_task(msg, accept=JSON | MSGPACK)
    assert decoded.args == args
    assert decoded.kwargs == kwargs
    assert decoded.headers == {"custom": kwargs}
    assert (decoded.name, decoded.id, decoded.eta) == (call.name, call.id, ETA)
    assert (decoded.time_limit, decoded.soft_time_limit) == (5.0, 2.5)
    assert (decoded.group, decoded.group_index, decoded.priority) == ("g", 0, 4)
    assert decoded.root_id == call.id
    assert decoded.correlation_id == call.id
