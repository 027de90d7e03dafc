"""The hot Redis commands are packed by hiredis directly (`connections.redis_packing._pack`, and
`pack_commands` for several in one write): the bytes must be exactly what redis-py's own
packer writes, and what redis-py refuses is refused with redis-py's error. No server:
packing opens no connection."""

from __future__ import annotations

from typing import Any

import pytest
import redis.exceptions as redis_errors
from hypothesis import given
from hypothesis import strategies as st
from redis.connection import Connection

from celeriac.connections import redis_packing
from celeriac.connections.redis_packing import _pack, pack_commands

ARGUMENT = st.one_of(
    st.text(),
    st.binary(),
    st.integers(),
    st.floats(),  # nan, inf and -0.0 included
)


def unconnected() -> Any:
    """A redis-py connection that is never opened: packing needs none."""
    factory: Any = Connection  # redis-py's connection classes are not annotated
    return factory()


def redis_py_bytes(*args: Any) -> bytes:
    return b"".join(unconnected().pack_command(*args))


@given(st.lists(ARGUMENT, max_size=40))
def test_hot_commands_are_packed_byte_for_byte_as_redis_py_packs_them(args: list[Any]) -> None:
    command = ("EVALSHA", "f" * 40, 2, *args)
    assert b"".join(_pack(unconnected(), command)) == redis_py_bytes(*command)


@given(st.lists(st.lists(ARGUMENT, max_size=8), max_size=6))
def test_several_commands_are_packed_in_one_buffer_as_redis_py_packs_them(
    argument_lists: list[list[Any]],
) -> None:
    # What a result wait writes: UNSUBSCRIBE, MGET and SUBSCRIBE in one go.
    commands = [("UNSUBSCRIBE",)] + [("MGET", "k", *args) for args in argument_lists]
    packed = pack_commands(unconnected(), commands)
    assert len(packed) == 1
    assert packed[0] == b"".join(unconnected().pack_commands(commands))


def test_a_command_name_of_several_words_is_split_as_redis_py_splits_it() -> None:
    packed = b"".join(_pack(unconnected(), ("CLIENT TRACKING", "on")))
    assert packed == redis_py_bytes("CLIENT TRACKING", "on")
    assert packed.startswith(b"*3\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n")


@pytest.mark.parametrize("bad", [True, None, object(), [1, 2]])
def test_an_argument_redis_py_refuses_is_refused_with_its_data_error(bad: Any) -> None:
    with pytest.raises(redis_errors.DataError) as raised:
        unconnected().pack_command("SET", "key", bad)  # what redis-py does
    with pytest.raises(redis_errors.DataError, match="cannot send 'SET'") as ours:
        _pack(unconnected(), ("SET", "key", bad))
    assert type(ours.value) is type(raised.value)


def test_without_hiredis_redis_py_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_packing, "_HIREDIS_PACK", None)
    command = ("LPUSH", "queue", b"\x00envelope", 1.5)
    assert b"".join(_pack(unconnected(), command)) == redis_py_bytes(*command)
