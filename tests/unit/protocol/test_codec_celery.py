"""Task messages against stock Celery 5.7: `encode_task` compared with what
`app.amqp.as_task_v2` builds for the same call, and `decode_task` reading what Celery
sends (protocol v2, v1 and hybrid, spec §1.13)."""

# kombu and Celery (the oracles here) ship no type hints.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import kombu.compression
import kombu.serialization
import pytest

from celeriac.protocol.codec import decode_task, encode_task
from tests.unit.protocol.codec_messages import (
    CALLS,
    ETA,
    EXPIRES,
    JSON,
    MSGPACK,
    SIG,
    UTC,
    body_of,
    celery_message,
    message,
    minimal,
    our_call,
)

if TYPE_CHECKING:
    from celery import Celery


@pytest.mark.parametrize("spec", CALLS)
def test_encode_headers_match_celery_as_task_v2(celery_app: Celery, spec: dict[str, Any]) -> None:
    ours = encode_task(our_call("t1", "proj.add", spec))
    theirs = celery_message(celery_app, task_id="t1", name="proj.add", **spec)
    assert ours.headers == theirs.headers


@pytest.mark.parametrize("spec", CALLS)
def test_encode_body_matches_celery_as_task_v2(celery_app: Celery, spec: dict[str, Any]) -> None:
    ours = encode_task(our_call("t1", "proj.add", spec))
    theirs = celery_message(celery_app, task_id="t1", name="proj.add", **spec)
    assert body_of(ours) == body_of(theirs)
    assert ours.content_type == theirs.content_type


@pytest.mark.parametrize("spec", CALLS)
def test_encode_properties_match_celery_as_task_v2(
    celery_app: Celery, spec: dict[str, Any]
) -> None:
    ours = encode_task(our_call("t1", "proj.add", spec)).properties
    theirs = celery_message(celery_app, task_id="t1", name="proj.add", **spec).properties
    assert {key: ours[key] for key in theirs} == theirs


# -- decode what stock Celery sends --------------------------------------------------------------


@pytest.mark.parametrize("spec", CALLS)
def test_decode_reads_celery_messages_as_the_call_that_made_them(
    celery_app: Celery, spec: dict[str, Any]
) -> None:
    msg = celery_message(celery_app, task_id="t1", name="proj.add", **spec)
    expected = our_call("t1", "proj.add", spec)
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
    ours = decode_task(encode_task(our_call("t1", "p.a", spec)), accept=JSON)
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
