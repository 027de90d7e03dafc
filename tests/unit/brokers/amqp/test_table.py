"""Our content-header encoding is byte-for-byte py-amqp's, and fails where py-amqp fails."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from enum import Enum
from typing import Any

import pytest
from amqp import Message
from amqp.serialization import dumps
from hypothesis import given
from hypothesis import strategies as st

from celeriac.brokers.amqp import table as amqp_table
from celeriac.brokers.amqp.table import encode_properties


def py_amqp(properties: dict[str, Any]) -> bytes:
    """What py-amqp writes for these properties (its Message encoder's steps)."""
    flags = 0
    shift = 15
    formats: list[str] = []
    values: list[Any] = []
    for name, kind in Message.PROPERTIES:
        value = properties.get(name)
        if value is not None:
            flags |= 1 << shift
            formats.append(kind)
            values.append(value)
        shift -= 1
    encoded: bytes = dumps("".join(formats), values)
    return flags.to_bytes(2, "big") + encoded


class Colour(str, Enum):
    RED = "red"


HEADERS = [
    {},
    {"task": "proj.add", "id": "6a1c", "eta": None, "retries": 0, "timelimit": [None, None]},
    {"ignore_result": False, "flag": True, "ratio": 2.5, "raw": b"\x00\xff"},
    {"small": 2147483647, "low": -2147483647, "edge": -2147483648, "big": 2**40},
    {"max": 2**63 - 1, "min": -(2**63)},
    {"nested": [1, {"a": None, "b": (True, 2.5, [])}], "stamps": {}},
    {"text": "héllo ✓", "surrogate": "\udc80", "empty": ""},
    {"k" * 255: 1},
    {"when": datetime(2026, 11, 25, tzinfo=timezone.utc), "price": Decimal("1.50")},
    {"colour": Colour.RED, "count": 3},
    {b"raw-key": 1},
]


@pytest.mark.parametrize("headers", HEADERS)
def test_headers_encode_as_py_amqp_does(headers: dict[Any, Any]) -> None:
    properties = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "application_headers": headers,
        "delivery_mode": 2,
        "correlation_id": "6a1c",
        "reply_to": "d3f1",
    }
    assert encode_properties(properties) == py_amqp(properties)


def test_every_property_encodes_as_py_amqp_does() -> None:
    properties = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "application_headers": {"a": 1},
        "delivery_mode": 2,
        "priority": 9,
        "correlation_id": "c",
        "reply_to": "r",
        "expiration": "1000",
        "message_id": "m",
        "timestamp": 1_764_000_000,
        "type": "t",
        "user_id": "guest",
        "app_id": "app",
        "cluster_id": "",
    }
    assert encode_properties(properties) == py_amqp(properties)


@pytest.mark.parametrize(
    "properties",
    [
        {"application_headers": {"k" * 256: 1}},
        {"application_headers": {"huge": 2**64}},
        {"application_headers": {"odd": {1, 2}}},
        {"application_headers": {"nested": [object()]}},
        {"correlation_id": "c" * 256},
        {"priority": 256},
    ],
    ids=["long-name", "int-over-64-bits", "set", "object-in-list", "long-shortstr", "priority"],
)
def test_what_py_amqp_refuses_is_refused_with_its_error(properties: dict[str, Any]) -> None:
    with pytest.raises(Exception) as theirs:
        py_amqp(properties)
    with pytest.raises(type(theirs.value)):
        encode_properties(properties)


def test_names_are_remembered_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amqp_table, "_NAMES", {})
    monkeypatch.setattr(amqp_table, "MAX_NAMES", 3)
    headers = {f"h{i}": i for i in range(10)}
    properties = {"application_headers": headers}
    assert encode_properties(properties) == py_amqp(properties)
    assert len(amqp_table._NAMES) == 3
    assert encode_properties(properties) == py_amqp(properties)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=10), inner, max_size=4),
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=30), values, max_size=12))
def test_any_table_of_task_header_values_encodes_as_py_amqp_does(headers: dict[str, Any]) -> None:
    properties = {"content_type": "application/json", "application_headers": headers}
    assert encode_properties(properties) == py_amqp(properties)
