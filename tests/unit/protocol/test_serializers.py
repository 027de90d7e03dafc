"""Serializers and compressors, checked against kombu 5.7 as the oracle (spec §1.5)."""

# kombu and Celery (the oracles here) ship no type hints.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import bz2
import json
import lzma
import pickle
import tracemalloc
import uuid
import zlib
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import kombu.compression
import kombu.serialization
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu.utils import json as kombu_json

from celeriac.exceptions import (
    ContentDisallowed,
    ImproperlyConfigured,
    MessageTooLarge,
    SerializationError,
)
from celeriac.protocol import serializers
from celeriac.protocol.serializers import (
    compress,
    decompress,
    dumps,
    get_serializer,
    json_dumps,
    json_loads,
    loads,
    normalize_accept,
)

JSON = frozenset({"application/json"})
MSGPACK = frozenset({"application/x-msgpack"})
PICKLE = frozenset({"application/x-python-serialize"})

AWARE = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
TYPED_VALUES: list[Any] = [
    AWARE,
    datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    datetime(2024, 1, 2, 3, 4, 5),
    date(2024, 1, 2),
    time(3, 4, 5, 6),
    time(3, 4, 5, tzinfo=timezone.utc),
    Decimal("1.5"),
    Decimal("-0.000000000000000000000000001"),
    uuid.UUID(int=1),
    uuid.uuid4(),
    b"abc",
    b"\xff\x00",
    b"",
]


def _kombu_wire(value: Any) -> Any:
    """What kombu puts on the wire for `value`, as plain JSON data."""
    return json.loads(kombu_json.dumps(value))


# -- JSON type tags ---------------------------------------------------------------------


@pytest.mark.parametrize("value", TYPED_VALUES, ids=repr)
def test_json_round_trips_tagged_value(value: Any) -> None:
    decoded = json_loads(json_dumps(value))
    assert decoded == value
    assert type(decoded) is type(value)


def test_json_round_trips_aware_datetime_with_its_offset() -> None:
    value = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    decoded = json_loads(json_dumps(value))
    assert decoded == value
    assert decoded.utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize("value", TYPED_VALUES, ids=repr)
def test_json_writes_the_same_tag_as_kombu(value: Any) -> None:
    assert json.loads(json_dumps(value)) == _kombu_wire(value)


def test_json_writes_utf8_bytes_as_bytes_tag_and_others_as_base64() -> None:
    assert json.loads(json_dumps(b"abc")) == {"__type__": "bytes", "__value__": "abc"}
    assert json.loads(json_dumps(b"\xff\x00")) == {"__type__": "base64", "__value__": "/wA="}


def test_json_writes_uuid_as_hex_object() -> None:
    value = uuid.UUID(int=1)
    assert json.loads(json_dumps(value)) == {
        "__type__": "uuid",
        "__value__": {"hex": "00000000000000000000000000000001"},
    }


def test_json_reads_the_spec_capture_of_a_tagged_result() -> None:
    captured = (
        b'{"dt": {"__type__": "datetime", "__value__": "2024-01-02T03:04:05+00:00"}, '
        b'"d": {"__type__": "date", "__value__": "2024-01-02"}, '
        b'"dec": {"__type__": "decimal", "__value__": "1.5"}, '
        b'"u": {"__type__": "uuid", "__value__": {"hex": "00000000000000000000000000000001"}}, '
        b'"b": {"__type__": "bytes", "__value__": "abc"}, '
        b'"b2": {"__type__": "base64", "__value__": "/wA="}}'
    )
    assert json_loads(captured) == {
        "dt": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        "d": date(2024, 1, 2),
        "dec": Decimal("1.5"),
        "u": uuid.UUID(int=1),
        "b": b"abc",
        "b2": b"\xff\x00",
    }


NESTED: dict[str, Any] = {
    "when": [AWARE, {"day": date(2024, 1, 2), "at": time(12, 0)}],
    "money": {"total": Decimal("10.25"), "parts": [Decimal("5"), Decimal("5.25")]},
    "ids": [uuid.UUID(int=7), [[uuid.UUID(int=8)]]],
    "blobs": {"text": b"hello", "binary": b"\x80\x81", "empty": b""},
    "plain": [1, 2.5, "x", None, True, {"k": []}],
}


def test_json_decodes_nested_values_kombu_wrote() -> None:
    assert json_loads(kombu_json.dumps(NESTED).encode()) == NESTED


def test_kombu_decodes_nested_values_we_wrote() -> None:
    assert kombu_json.loads(json_dumps(NESTED)) == NESTED


def test_json_decodes_a_date_tag_holding_a_full_timestamp_like_kombu() -> None:
    data = b'{"__type__": "date", "__value__": "2024-01-02T03:04:05"}'
    assert json_loads(data) == kombu_json.loads(data) == date(2024, 1, 2)


def test_json_leaves_a_dict_with_more_than_the_two_tag_keys_alone() -> None:
    data = b'{"__type__": "nope", "__value__": 1, "other": 2}'
    assert (
        json_loads(data)
        == kombu_json.loads(data)
        == {
            "__type__": "nope",
            "__value__": 1,
            "other": 2,
        }
    )


def test_json_encodes_an_object_through_its___json___method() -> None:
    class Signature:
        def __json__(self) -> dict[str, Any]:
            return {"task": "proj.add", "args": [AWARE]}

    expected = {"task": "proj.add", "args": [AWARE]}
    assert json_loads(json_dumps(Signature())) == expected
    assert json.loads(json_dumps(Signature())) == _kombu_wire(Signature())


def test_json_decodes_tags_as_deep_as_the_parser_goes() -> None:
    depth = 900
    data = b"[" * depth + b'{"__type__": "decimal", "__value__": "2"}' + b"]" * depth
    value = json_loads(data)
    for _ in range(depth):
        value = value[0]
    assert value == Decimal(2)


# -- what Python's json writes ------------------------------------------------------------


def test_json_decodes_nan_and_infinity_written_by_python_json() -> None:
    data = json.dumps([float("nan"), float("inf"), float("-inf")]).encode()
    nan, inf, minus_inf = json_loads(data)
    assert nan != nan
    assert inf == float("inf")
    assert minus_inf == float("-inf")


@pytest.mark.parametrize(
    "number", [2**63, 2**64, -(2**63) - 1, 2**64 + 1, 10**30, -(10**40), 2**200]
)
def test_json_decodes_integers_beyond_64_bits_exactly(number: int) -> None:
    decoded = json_loads(json.dumps({"n": [number]}).encode())
    assert decoded == {"n": [number]}
    assert isinstance(decoded["n"][0], int)


def test_json_decodes_big_integer_next_to_a_tag() -> None:
    data = kombu_json.dumps([2**70, Decimal("1.1")]).encode()
    assert json_loads(data) == [2**70, Decimal("1.1")]


def test_json_keeps_long_digit_strings_as_strings() -> None:
    assert json_loads(b'["12345678901234567890123"]') == ["12345678901234567890123"]


def test_json_decodes_str_input() -> None:
    assert json_loads('{"a": [1, "\\u00e9"]}') == {"a": [1, "é"]}


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_json_nested_100000_levels_gives_serialization_error(opener: bytes) -> None:
    depth = 100_000
    closer = b"]" if opener == b"[" else b"}"
    data = opener * depth + (b"1" if opener != b"[" else b"") + closer * depth
    with pytest.raises(SerializationError, match="nested too deeply"):
        json_loads(data)


def test_loads_of_deeply_nested_json_gives_serialization_error() -> None:
    with pytest.raises(SerializationError):
        loads(b"[" * 100_000 + b"]" * 100_000, "application/json", accept=JSON)


def test_json_encoding_a_too_deep_value_gives_serialization_error() -> None:
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(SerializationError, match="cannot encode as JSON"):
        json_dumps(value)


@pytest.mark.parametrize("data", [b"", b"{", b"[1,]", b"{'a': 1}", b"nul", b"[1] [2]"])
def test_invalid_json_gives_serialization_error(data: bytes) -> None:
    with pytest.raises(SerializationError, match="invalid JSON"):
        json_loads(data)


def test_non_utf8_json_gives_serialization_error() -> None:
    with pytest.raises(SerializationError, match=r"invalid JSON.*utf-8"):
        json_loads(b'["\xff\xfe"]')


def test_unknown_type_tag_gives_serialization_error_naming_it() -> None:
    with pytest.raises(SerializationError, match="unknown JSON type tag 'frozenset'"):
        json_loads(b'[{"__type__": "frozenset", "__value__": [1]}]')


def test_non_string_type_tag_gives_serialization_error() -> None:
    with pytest.raises(SerializationError, match="unknown JSON type tag"):
        json_loads(b'{"__type__": ["datetime"], "__value__": "2024-01-01"}')


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        ("decimal", '"abc"'),
        ("decimal", "null"),
        ("bytes", "5"),
        ("base64", "5"),
        ("base64", '"a"'),
        ("uuid", "[1]"),
        ("uuid", '{"hex": "zz"}'),
        ("uuid", '{"nope": 1}'),
        ("datetime", '"yesterday"'),
        ("datetime", "1700000000"),
        ("date", '"2024-13-01"'),
        ("time", '"25:00"'),
    ],
)
def test_bad_value_in_type_tag_gives_serialization_error(tag: str, value: str) -> None:
    data = f'{{"x": {{"__type__": "{tag}", "__value__": {value}}}}}'.encode()
    with pytest.raises(SerializationError, match=f"bad value for JSON type tag '{tag}'"):
        json_loads(data)


def test_unencodable_value_gives_serialization_error_naming_its_type() -> None:
    class Opaque:
        pass

    with pytest.raises(SerializationError, match="Opaque is not JSON serializable"):
        json_dumps({"value": Opaque()})


def test_json_encodes_sets_as_lists() -> None:
    assert json_loads(json_dumps({"s": {3}})) == {"s": [3]}


# -- accept_content -------------------------------------------------------------------------


def test_normalize_accept_maps_serializer_names_to_mime_types() -> None:
    assert normalize_accept(["json", "msgpack", "pickle"]) == {
        "application/json",
        "application/x-msgpack",
        "application/x-python-serialize",
    }


def test_normalize_accept_matches_kombu_for_names_and_mime_types() -> None:
    accept = ["json", "application/x-msgpack", "application/data"]
    assert normalize_accept(accept) == kombu.serialization.prepare_accept_content(accept)


def test_normalize_accept_refuses_an_unknown_name_naming_it() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"accept_content lists 'jsn'.*json"):
        normalize_accept(["json", "jsn"])


@pytest.mark.parametrize("entry", [None, 1, b"json"])
def test_normalize_accept_refuses_a_non_string_entry(entry: Any) -> None:
    with pytest.raises(ImproperlyConfigured, match="not a serializer"):
        normalize_accept(["json", entry])


def test_normalize_accept_names_the_setting_in_its_error() -> None:
    with pytest.raises(ImproperlyConfigured, match="result_accept_content lists 'x'"):
        normalize_accept(["x"], setting="result_accept_content")


def test_loads_refuses_a_content_type_not_accepted() -> None:
    with pytest.raises(ContentDisallowed, match=r"application/x-msgpack.*accept_content"):
        loads(msgpack.packb([1]), "application/x-msgpack", accept=JSON)


@pytest.mark.parametrize("content_type", [None, ""])
def test_loads_refuses_a_missing_content_type(content_type: str | None) -> None:
    with pytest.raises(ContentDisallowed, match="no content type"):
        loads(b"[1]", content_type, accept=JSON)


def test_loads_refuses_an_accepted_type_it_has_no_serializer_for() -> None:
    with pytest.raises(ContentDisallowed, match="no serializer for content type"):
        loads(b"x: 1", "application/x-yaml", accept=frozenset({"application/x-yaml"}))


def test_loads_wraps_decoder_errors_in_serialization_error() -> None:
    with pytest.raises(SerializationError, match="invalid JSON"):
        loads(b"{", "application/json", accept=JSON)


# -- pickle -------------------------------------------------------------------------------

UNPICKLED: list[str] = []


def _record_unpickling(marker: str) -> str:
    UNPICKLED.append(marker)
    return marker


class _Tripwire:
    """Unpickling this runs `_record_unpickling` and creates a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (_record_unpickling, (str(self.path),))


class _FileTripwire:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def test_pickle_payload_is_never_run_when_pickle_is_not_accepted(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    data = pickle.dumps([_Tripwire(flag), _FileTripwire(flag)])
    UNPICKLED.clear()
    with pytest.raises(ContentDisallowed, match="application/x-python-serialize"):
        loads(data, "application/x-python-serialize", accept=JSON)
    with pytest.raises(ContentDisallowed):
        loads(data, "application/x-python-serialize", accept=frozenset())
    assert UNPICKLED == []
    assert not flag.exists()
    # The same bytes under an accepted JSON label are only ever parsed as JSON.
    with pytest.raises(SerializationError):
        loads(data, "application/json", accept=JSON | PICKLE)
    assert UNPICKLED == []
    assert not flag.exists()
    # Control: once pickle is accepted the payload does run, so the checks above can fail.
    loads(data, "application/x-python-serialize", accept=PICKLE)
    assert [str(flag)] == UNPICKLED
    assert flag.exists()


def test_pickle_round_trips_when_accepted() -> None:
    body, content_type, encoding = dumps({"a": {1, 2}, "t": (1,)}, "pickle")
    assert (content_type, encoding) == ("application/x-python-serialize", "binary")
    assert loads(body, content_type, accept=PICKLE) == {"a": {1, 2}, "t": (1,)}


def test_pickle_is_not_in_the_default_accept_list() -> None:
    from celeriac.app.config import DEFAULTS

    assert "application/x-python-serialize" not in normalize_accept(DEFAULTS["accept_content"])


# -- msgpack and the registry -----------------------------------------------------------------


def test_msgpack_round_trips_nested_values() -> None:
    value = {"args": [1, -2, 2.5, "é", None, True, b"\x00\xff"], "kw": {"n": [[[]]]}}
    body, content_type, encoding = dumps(value, "msgpack")
    assert (content_type, encoding) == ("application/x-msgpack", "binary")
    assert loads(body, content_type, accept=MSGPACK) == value


def test_msgpack_round_trips_tagged_values() -> None:
    value = {"when": AWARE, "dec": Decimal("2.5"), "id": uuid.UUID(int=3)}
    body, content_type, _ = dumps(value, "msgpack")
    assert loads(body, content_type, accept=MSGPACK) == value


def test_msgpack_reads_what_kombu_writes() -> None:
    value = {"args": [1, "x", b"raw", [None]], "kwargs": {"k": 1.5}}
    _, _, body = kombu.serialization.dumps(value, serializer="msgpack")
    assert loads(body, "application/x-msgpack", accept=MSGPACK) == value


def test_kombu_reads_what_our_msgpack_writes() -> None:
    value = {"args": [1, "x", b"raw", [None]], "kwargs": {"k": 1.5}}
    body, content_type, encoding = dumps(value, "msgpack")
    assert kombu.serialization.loads(body, content_type, encoding, accept=MSGPACK) == value


def test_msgpack_refuses_an_integer_beyond_64_bits_with_a_clear_message() -> None:
    with pytest.raises(SerializationError, match="does not fit in 64 bits"):
        dumps([2**64], "msgpack")


@pytest.mark.parametrize("data", [b"\xc1", b"\x92\x01", b"\x91\x01\x02"])
def test_invalid_msgpack_gives_serialization_error(data: bytes) -> None:
    with pytest.raises(SerializationError, match="invalid msgpack"):
        loads(data, "application/x-msgpack", accept=MSGPACK)


def test_msgpack_nested_100000_levels_gives_serialization_error() -> None:
    with pytest.raises(SerializationError):
        loads(b"\x91" * 100_000 + b"\x90", "application/x-msgpack", accept=MSGPACK)


@pytest.mark.parametrize("name", ["json", "msgpack", "pickle"])
def test_serializer_content_type_and_encoding_match_kombu(name: str) -> None:
    ours = get_serializer(name)
    content_type, encoding, _ = kombu.serialization.dumps([1], serializer=name)
    assert (ours.content_type, ours.content_encoding) == (content_type, encoding)


def test_json_body_is_read_by_kombu_loads() -> None:
    body, content_type, encoding = dumps(NESTED, "json")
    assert kombu.serialization.loads(body, content_type, encoding) == NESTED


def test_get_serializer_refuses_an_unknown_name_listing_the_known_ones() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"unknown serializer 'yaml'.*json.*msgpack"):
        get_serializer("yaml")


def test_get_serializer_names_the_extra_when_msgpack_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_msgpack(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "msgpack":
            raise ImportError("No module named 'msgpack'", name="msgpack")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_msgpack)
    with pytest.raises(ImproperlyConfigured, match=r'pip install "celeriac\[msgpack\]"'):
        get_serializer("msgpack")


@settings(max_examples=30, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text()
        | st.binary(max_size=20)
        | st.decimals(allow_nan=False, allow_infinity=False)
        | st.datetimes(timezones=st.none() | st.just(timezone.utc))
        | st.dates()
        | st.uuids(),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=5), children, max_size=4)
        ),
        max_leaves=15,
    )
)
def test_json_round_trip_of_nested_tagged_values_agrees_with_kombu(value: Any) -> None:
    ours = json_dumps(value)
    assert json_loads(ours) == value
    assert kombu_json.loads(ours) == value
    assert json_loads(kombu_json.dumps(value).encode()) == value


# -- compression ----------------------------------------------------------------------------

PAYLOAD = b'[[2, 2], {}, {"callbacks": null}]' * 200


@pytest.mark.parametrize("name", ["zlib", "gzip", "bzip2", "bz2", "bzip", "lzma", "xz"])
def test_compression_round_trips_and_writes_kombus_mime_type(name: str) -> None:
    data, mime = compress(PAYLOAD, name)
    kombu_mime = kombu.compression.get_encoder(name if name not in ("bz2",) else "bzip2")[1]
    assert mime == kombu_mime
    assert decompress(data, mime) == PAYLOAD
    assert decompress(data, name) == PAYLOAD


@pytest.mark.parametrize("mime", ["application/x-gzip", "application/x-bz2", "application/x-lzma"])
def test_compress_accepts_a_mime_type_as_name(mime: str) -> None:
    data, written = compress(PAYLOAD, mime)
    assert written == mime
    assert decompress(data, mime) == PAYLOAD


@pytest.mark.parametrize("name", ["zlib", "bzip2", "lzma"])
def test_decompress_reads_what_kombu_compressed(name: str) -> None:
    data, mime = kombu.compression.compress(PAYLOAD, name)
    assert decompress(data, mime) == PAYLOAD


@pytest.mark.parametrize("name", ["zlib", "bzip2", "lzma"])
def test_kombu_decompresses_what_we_compressed(name: str) -> None:
    data, mime = compress(PAYLOAD, name)
    assert kombu.compression.decompress(data, mime) == PAYLOAD


def test_compress_refuses_an_unknown_compressor() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"unknown compression 'snappy'.*zlib"):
        compress(PAYLOAD, "snappy")


def test_decompress_refuses_an_unknown_compression_header() -> None:
    with pytest.raises(SerializationError, match="unknown compression 'application/zstd'"):
        decompress(PAYLOAD, "application/zstd")


@pytest.mark.parametrize("mime", ["application/x-gzip", "application/x-bz2", "application/x-lzma"])
def test_corrupt_compressed_data_gives_serialization_error(mime: str) -> None:
    with pytest.raises(SerializationError, match="cannot decompress"):
        decompress(b"this is not compressed at all", mime)


@pytest.mark.parametrize("name", ["zlib", "bzip2", "lzma"])
def test_truncated_compressed_data_gives_serialization_error(name: str) -> None:
    data, mime = compress(PAYLOAD, name)
    with pytest.raises(SerializationError, match="truncated"):
        decompress(data[: len(data) // 2], mime)


@pytest.mark.parametrize(
    ("module", "mime"), [(bz2, "application/x-bz2"), (lzma, "application/x-lzma")]
)
def test_decompress_reads_concatenated_streams_like_the_stdlib(module: Any, mime: str) -> None:
    data = module.compress(b"first ") + module.compress(b"second")
    assert decompress(data, mime) == module.decompress(data) == b"first second"


@pytest.mark.parametrize("name", ["zlib", "bzip2", "lzma"])
def test_decompress_over_max_size_gives_message_too_large(name: str) -> None:
    data, mime = compress(b"\0" * (3 * 1024 * 1024), name)
    with pytest.raises(MessageTooLarge, match="over 1048576 bytes"):
        decompress(data, mime, max_size=1024 * 1024)
    assert len(decompress(data, mime, max_size=3 * 1024 * 1024)) == 3 * 1024 * 1024


def test_decompressing_a_zip_bomb_never_inflates_it_in_memory() -> None:
    packer = zlib.compressobj()
    block = b"\0" * (1024 * 1024)
    bomb = b"".join(packer.compress(block) for _ in range(64)) + packer.flush()
    assert len(bomb) < 100_000  # 64 MiB once inflated
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooLarge):
            decompress(bomb, "application/x-gzip", max_size=1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


def test_registry_holds_json_msgpack_and_pickle() -> None:
    assert serializers.serializer_for_content_type("application/json") is get_serializer("json")
    assert serializers.serializer_for_content_type("application/x-yaml") is None
