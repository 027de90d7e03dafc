"""Reading kombu envelopes off a Redis list (no server needed: only the parsing)."""

from __future__ import annotations

import base64
import json

import pytest

from celeriac.brokers.base import INVALID_ENVELOPE, Delivery
from celeriac.brokers.redis.envelope import read_delivery, without_redelivered
from celeriac.exceptions import ContentDisallowed
from celeriac.protocol.codec import decode_task

ACCEPT = frozenset({"application/json"})


def envelope(**fields: object) -> bytes:
    value: dict[str, object] = {
        "body": base64.b64encode(b"[[1], {}, {}]").decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"id": "task-1", "task": "tests.echo"},
        "properties": {"body_encoding": "base64", "delivery_tag": "t-1", "priority": 0},
    }
    value.update(fields)
    return json.dumps(value).encode()


def read(raw: bytes) -> Delivery:
    return read_delivery(raw, "q", "tag", 0, "held")


def test_a_kombu_envelope_is_read_as_sent() -> None:
    delivery = read(envelope())
    assert decode_task(delivery.message, accept=ACCEPT).args == [1]


def test_an_envelope_without_content_type_is_not_decoded_as_json() -> None:
    # Every kombu producer writes a content type; one without is refused, as on the
    # other brokers, not guessed.
    delivery = read(envelope(**{"content-type": None}))
    with pytest.raises(ContentDisallowed):
        decode_task(delivery.message, accept=ACCEPT)


def test_an_envelope_with_bad_base64_is_an_invalid_envelope() -> None:
    delivery = read(envelope(body="%%% not base64 %%%="))
    assert delivery.message.content_type == INVALID_ENVELOPE
    # Its readable headers stay, so the dead letter and the log name the task.
    assert delivery.message.headers["id"] == "task-1"


def test_an_entry_that_is_not_json_is_an_invalid_envelope() -> None:
    delivery = read(b"\x00{not json")
    assert delivery.message.content_type == INVALID_ENVELOPE
    assert delivery.message.headers == {}
    assert delivery.message.body == b"\x00{not json"


def test_a_copy_without_redelivered_keeps_everything_else() -> None:
    message = read(envelope(headers={"id": "task-1", "redelivered": True})).message
    copy = without_redelivered(message)
    assert copy.headers == {"id": "task-1"}
    assert (copy.body, copy.properties) == (message.body, message.properties)
    assert without_redelivered(copy) is copy
