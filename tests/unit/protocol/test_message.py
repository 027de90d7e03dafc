"""The message envelope's accessors."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from celeriac.protocol.message import Message


def test_message_reads_task_id_and_name_from_the_headers() -> None:
    msg = Message(headers={"id": "t1", "task": "proj.add"}, body=b"[]")
    assert (msg.task_id, msg.task_name) == ("t1", "proj.add")


@pytest.mark.parametrize("headers", [{}, {"id": 5, "task": None}, {"id": ["t"], "task": 1}])
def test_message_gives_none_for_a_missing_or_non_string_id_and_name(
    headers: dict[str, Any],
) -> None:
    msg = Message(headers=headers, body=b"[]")
    assert (msg.task_id, msg.task_name) == (None, None)


def test_message_reads_an_integer_priority() -> None:
    assert Message(headers={}, body=b"", properties={"priority": 0}).priority == 0
    assert Message(headers={}, body=b"", properties={"priority": 9}).priority == 9


@pytest.mark.parametrize("priority", [None, "5", 5.0, True])
def test_message_ignores_a_priority_that_is_not_an_integer(priority: Any) -> None:
    assert Message(headers={}, body=b"", properties={"priority": priority}).priority is None


def test_message_defaults_to_json_content() -> None:
    msg = Message(headers={}, body=b"[]")
    assert (msg.content_type, msg.content_encoding, msg.properties) == (
        "application/json",
        "utf-8",
        {},
    )


def test_message_is_frozen() -> None:
    msg = Message(headers={}, body=b"[]")
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.body = b"{}"  # type: ignore[misc]
