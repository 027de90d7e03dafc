"""Task messages: `decode_task` against the spec: what it tolerates, what it rejects, and
the encode-decode round trip."""

# kombu and Celery (the oracles here) ship no type hints.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import json
import uuid
import zlib
from datetime import datetime, timedelta
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celeriac.exceptions import (
    ContentDisallowed,
    InvalidTaskError,
    MessageTooLarge,
    SerializationError,
)
from celeriac.protocol.codec import TaskCall, decode_task, encode_task
from celeriac.protocol.message import Message
from tests.unit.protocol.codec_messages import (
    ETA,
    JSON,
    MSGPACK,
    SIG,
    UTC,
    message,
    minimal,
)

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
