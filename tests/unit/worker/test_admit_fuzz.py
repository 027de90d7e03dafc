"""Fuzzing every way a message reaches admission: random and mutated real messages go
through each broker's decoder (the Redis envelope, the AMQP content header and message,
the SQLite row) and the task codec. Only the declared errors may leave the codec, and
nothing at all may leave `Admission.check`: whatever a message holds ends as a verdict,
so it can never loop.

Bounded for CI: a fixed number of examples per target, derandomized (the same inputs on
every run), no deadline (the machine may be loaded). Each target takes about a second.
"""

from __future__ import annotations

import base64
import contextlib
import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celeriac._time import UTC
from celeriac.brokers.amqp.inbound import Received, decode_properties
from celeriac.brokers.amqp.message import basic_properties, from_amqp, to_amqp
from celeriac.brokers.amqp.table import encode_properties
from celeriac.brokers.base import Delivery
from celeriac.brokers.redis.envelope import encode_envelope, read_delivery
from celeriac.brokers.sqlite_rows import dump_json, row_delivery
from celeriac.exceptions import (
    ContentDisallowed,
    InvalidTaskError,
    MessageTooLarge,
    SerializationError,
)
from celeriac.protocol.codec import TaskCall, decode_task, encode_task
from celeriac.protocol.message import Message
from celeriac.testing import memory_app
from celeriac.worker.admit import Admission, Run, Verdict
from celeriac.worker.revocations import Revocations

if TYPE_CHECKING:
    from celeriac import Celeriac

DECLARED = (ContentDisallowed, MessageTooLarge, SerializationError, InvalidTaskError)
MAX_SIZE = 64 * 1024

FUZZ = settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def real_messages() -> list[Message]:
    """Real task messages of the kinds a worker sees."""
    now = datetime.now(UTC)
    calls = [
        TaskCall(name="fuzz.add", id="id-1", args=[1, 2]),
        TaskCall(
            name="fuzz.add",
            id="id-2",
            args=[1],
            kwargs={"y": 2},
            eta=now - timedelta(seconds=1),
            expires=now + timedelta(days=1),
            time_limit=10.0,
            soft_time_limit=5.0,
            retries=3,
            group="g",
            group_index=1,
            callbacks=[{"task": "fuzz.add", "args": [1], "kwargs": {}, "options": {}}],
        ),
    ]
    messages = [encode_task(call) for call in calls]
    # Protocol v1: everything in the body.
    v1 = {"task": "fuzz.add", "id": "id-3", "args": [1, 2], "kwargs": {}, "timelimit": [1, 2]}
    messages.append(Message(headers={}, body=orjson.dumps(v1), content_type="application/json"))
    messages.append(encode_task(calls[0], compression="zlib"))
    return messages


REAL = real_messages()

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**1100)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# Header values as the task codec reads them: protocol names get random values.
header_names = st.sampled_from(
    [
        "task",
        "id",
        "eta",
        "expires",
        "retries",
        "timelimit",
        "group",
        "group_index",
        "stamps",
        "stamped_headers",
        "ignore_result",
        "compression",
        "root_id",
        "parent_id",
        "argsrepr",
    ]
) | st.text(max_size=10)
headers_strategy = st.dictionaries(header_names, json_value, max_size=8)


def to_json(value: Any) -> bytes:
    """JSON as any producer may write it (integers of any size, NaN)."""
    return json.dumps(value).encode()


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, byte) edits: flip, insert or delete one byte each."""
    buffer = bytearray(data)
    for kind, position, value in edits:
        if not buffer:
            buffer.append(value)
            continue
        index = position % len(buffer)
        if kind == 0:
            buffer[index] ^= value or 1
        elif kind == 1:
            buffer.insert(index, value)
        else:
            del buffer[index]
    return bytes(buffer)


edits_strategy = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 1 << 16), st.integers(0, 255)),
    min_size=1,
    max_size=6,
)


@pytest.fixture(scope="module")
def admission() -> Admission:
    app: Celeriac = memory_app("fuzz")
    app.conf.accept_content = ["json", "msgpack"]
    app.conf.task_max_message_size = MAX_SIZE

    @app.task(name="fuzz.add")
    def add(x: int, y: int) -> int:
        return x + y

    return Admission(app, Revocations(app.backend), broker_counts_crashes=True)


def admit(admission: Admission, delivery: Delivery) -> Verdict:
    """The codec raises only declared errors; admission raises nothing."""
    with contextlib.suppress(*DECLARED):
        decode_task(delivery.message, accept=admission.accept, max_size=MAX_SIZE)
    verdict = admission.check(delivery)
    assert verdict is not None
    return verdict


# -- the task codec ------------------------------------------------------------------


@FUZZ
@given(
    headers=headers_strategy,
    body=st.binary(max_size=200) | json_value.map(to_json),
    content_type=st.sampled_from(["application/json", "application/x-msgpack", "", "text/x"]),
    compression=st.none() | st.sampled_from(["zlib", "gzip", "bzip2", "nope"]),
)
def test_codec_random_messages(
    admission: Admission,
    headers: dict[str, Any],
    body: bytes,
    content_type: str,
    compression: str | None,
) -> None:
    if compression is not None:
        headers["compression"] = compression
    message = Message(headers=headers, body=body, content_type=content_type)
    admit(admission, Delivery(message=message, queue="q", tag="t"))


@FUZZ
@given(
    which=st.integers(0, len(REAL) - 1),
    edits=edits_strategy,
    header=header_names,
    value=json_value,
)
def test_codec_mutated_real_messages(
    admission: Admission,
    which: int,
    edits: list[tuple[int, int, int]],
    header: str,
    value: Any,
) -> None:
    real = REAL[which]
    headers = {**real.headers, header: value}
    message = Message(
        headers=headers,
        body=mutate(real.body, edits),
        properties=real.properties,
        content_type=real.content_type,
        content_encoding=real.content_encoding,
    )
    admit(admission, Delivery(message=message, queue="q", tag="t"))


# -- Redis: the JSON envelope --------------------------------------------------------


def redis_envelope(message: Message) -> bytes:
    return encode_envelope(message, exchange="", routing_key="q", priority=0, tag="tag")


@FUZZ
@given(which=st.integers(0, len(REAL) - 1), edits=edits_strategy)
def test_redis_mutated_envelopes(
    admission: Admission, which: int, edits: list[tuple[int, int, int]]
) -> None:
    raw = mutate(redis_envelope(REAL[which]), edits)
    admit(admission, read_delivery(raw, "q", "tag", 0, "held"))


@FUZZ
@given(
    envelope=st.dictionaries(
        st.sampled_from(["body", "headers", "properties", "content-type", "content-encoding"]),
        json_value,
    )
    | json_value,
    raw=st.binary(max_size=100),
)
def test_redis_random_envelopes(admission: Admission, envelope: Any, raw: bytes) -> None:
    admit(admission, read_delivery(to_json(envelope), "q", "tag", 0, "held"))
    admit(admission, read_delivery(raw, "q", "tag", 0, "held"))


@FUZZ
@given(which=st.integers(0, len(REAL) - 1), edits=edits_strategy)
def test_redis_mutated_base64_bodies(
    admission: Admission, which: int, edits: list[tuple[int, int, int]]
) -> None:
    envelope = orjson.loads(redis_envelope(REAL[which]))
    envelope["body"] = mutate(envelope["body"].encode(), edits).decode("latin-1")
    admit(admission, read_delivery(to_json(envelope), "q", "tag", 0, "held"))


# -- RabbitMQ: the content header (py-amqp's field tables) and the message -------------

amqp_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=10)
    | st.decimals(places=2, allow_nan=False, allow_infinity=False, min_value=-1000, max_value=1000)
    | st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1))
)
amqp_value = st.recursive(
    amqp_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


def amqp_properties(message: Message) -> dict[str, Any]:
    """The content-header properties a publish of `message` carries."""
    sent = to_amqp(message, basic_properties(message))
    return dict(sent.properties)


def received(properties_frame: bytes, body: bytes) -> Received | None:
    """The delivery the consumer hands out for a content header; None if it is refused
    (py-amqp then fails the connection: not ours to decode)."""
    try:
        properties = decode_properties(properties_frame, 0)
    except Exception:
        return None
    return Received(
        body=body,
        properties=properties,
        delivery_tag=1,
        redelivered=False,
        exchange="",
        routing_key="q",
        consumer_tag="ctag",
    )


def amqp_delivery(message: Received) -> Delivery:
    return Delivery(message=from_amqp(message, strip_death=lambda queue: False), queue="q", tag="1")


@FUZZ
@given(
    which=st.integers(0, len(REAL) - 1),
    header=header_names,
    value=amqp_value,
    edits=edits_strategy,
)
def test_amqp_random_and_mutated_headers(
    admission: Admission,
    which: int,
    header: str,
    value: Any,
    edits: list[tuple[int, int, int]],
) -> None:
    real = REAL[which]
    headers = {**real.headers, header: value}
    properties = amqp_properties(
        Message(
            headers=headers,
            body=real.body,
            properties=real.properties,
            content_type=real.content_type,
            content_encoding=real.content_encoding,
        )
    )
    try:
        frame = encode_properties(properties)
    except Exception:  # a value no field table can carry: refused at publish
        return
    for candidate in (frame, mutate(frame, edits)):
        message = received(candidate, mutate(real.body, edits))
        if message is not None:
            admit(admission, amqp_delivery(message))


# -- SQLite: the message row ---------------------------------------------------------


@FUZZ
@given(
    which=st.integers(0, len(REAL) - 1),
    edits=edits_strategy,
    column=st.integers(0, 2),
    content_type=st.sampled_from(["application/json", "", "application/x-msgpack"]),
)
def test_sqlite_mutated_rows(
    admission: Admission,
    which: int,
    edits: list[tuple[int, int, int]],
    column: int,
    content_type: str,
) -> None:
    real = REAL[which]
    columns = [dump_json(real.headers), dump_json(real.properties), real.body]
    columns[column] = mutate(columns[column], edits)
    headers, properties, body = columns
    row = (7, "q", 0, 2, 0, "", "q", content_type, "utf-8", headers, properties, body)
    admit(admission, row_delivery(row))


@FUZZ
@given(
    headers=st.binary(max_size=60) | json_value.map(to_json),
    properties=st.binary(max_size=30) | json_value.map(to_json),
    body=st.binary(max_size=60),
)
def test_sqlite_random_rows(
    admission: Admission, headers: bytes, properties: bytes, body: bytes
) -> None:
    row = (7, "q", 0, 1, 0, "", "q", "application/json", "utf-8", headers, properties, body)
    admit(admission, row_delivery(row))


def test_the_unmutated_messages_run_through_each_broker_decoder(admission: Admission) -> None:
    # The fuzz targets' baseline: what they mutate is admitted as it is.
    for real in REAL:
        raw = redis_envelope(real)
        assert base64.b64decode(orjson.loads(raw)["body"]) == real.body
        assert isinstance(admit(admission, read_delivery(raw, "q", "t", 0, "held")), Run)
        row = (
            7,
            "q",
            0,
            1,
            0,
            "",
            "q",
            real.content_type,
            "utf-8",
            dump_json(real.headers),
            dump_json(real.properties),
            real.body,
        )
        assert isinstance(admit(admission, row_delivery(row)), Run)
        message = received(encode_properties(amqp_properties(real)), real.body)
        assert message is not None
        assert isinstance(admit(admission, amqp_delivery(message)), Run)
