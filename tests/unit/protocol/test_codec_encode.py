"""Task messages: `encode_task` against the spec (§1.1-1.6): headers, properties, body."""

# kombu and Celery (the oracles here) ship no type hints.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import json
import os
import time as time_module
import zlib
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import msgpack
import pytest

from celeriac.exceptions import SerializationError
from celeriac.protocol.codec import TaskCall, encode_task, origin_nodename
from tests.unit.protocol.codec_messages import (
    ETA,
    EXPIRES,
    SIG,
    SPEC_HEADERS,
    UTC,
    body_of,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from celery import Celery


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
