"""The dead-letter limits read from transport options: defaults, None, refusals."""

from __future__ import annotations

import pytest

from celeriac.brokers.dead_letter_limits import (
    DEFAULT_BODY_MAX,
    DEFAULT_MAX,
    DEFAULT_TTL,
    DeadLetterLimits,
    trimmed_note,
)
from celeriac.exceptions import ImproperlyConfigured
from celeriac.protocol.message import Message


def test_defaults() -> None:
    limits = DeadLetterLimits.from_options({})
    assert (limits.ttl, limits.max_count, limits.body_max) == (
        DEFAULT_TTL,
        DEFAULT_MAX,
        DEFAULT_BODY_MAX,
    )
    assert DEFAULT_TTL == 14 * 24 * 3600


def test_none_means_no_limit() -> None:
    limits = DeadLetterLimits.from_options({"dead_letter_ttl": None, "dead_letter_max": None})
    assert limits.ttl is None
    assert limits.max_count is None
    assert limits.cutoff(1000.0) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("dead_letter_ttl", 0), ("dead_letter_max", -1), ("dead_letter_body_max", "lots")],
)
def test_bad_values_are_refused_by_name(name: str, value: object) -> None:
    with pytest.raises(ImproperlyConfigured, match=name):
        DeadLetterLimits.from_options({name: value})


def test_trim_keeps_a_prefix_and_the_full_size() -> None:
    limits = DeadLetterLimits(body_max=4)
    message = Message(headers={"id": "x"}, body=b"0123456789")
    kept, size = limits.trim(message)
    assert (kept.body, size, kept.headers) == (b"0123", 10, {"id": "x"})
    assert limits.trim(Message(headers={}, body=b"0123")) == (
        Message(headers={}, body=b"0123"),
        None,
    )
    assert trimmed_note(4, 10) == "body trimmed: kept 4 of 10 bytes"
    assert trimmed_note(4, None) == ""
