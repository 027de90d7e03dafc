"""Serializers and compressors by name and content type.

JSON is the default and follows kombu >= 5.3 exactly: `datetime`, `date`, `time`,
`Decimal`, `UUID` and `bytes` travel as `{"__type__": T, "__value__": V}` objects, so a
stock Celery peer gets the same Python types back. msgpack is available when installed;
pickle is registered but every decode checks `accept_content` first, and pickle is never
in the default list.
"""

from __future__ import annotations

import base64
import bz2
import json
import lzma
import pickle
import uuid
import zlib
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, final

import orjson

from celeriac.exceptions import (
    ContentDisallowed,
    ImproperlyConfigured,
    MessageTooLarge,
    SerializationError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "Serializer",
    "auth_not_set_up",
    "compress",
    "decompress",
    "dumps",
    "get_serializer",
    "json_dumps",
    "json_loads",
    "loads",
    "normalize_accept",
    "serializer_for_content_type",
]

# kombu's JSON type tags: an object with exactly these two keys is a typed value.
TYPE_KEY = "__type__"
VALUE_KEY = "__value__"
_TAG_MARKER = b'"__type__"'
# A run of digits this long may be an integer beyond 64 bits (see json_loads). Found by
# mapping every digit to "d" and anything else to "." and looking for the run with
# bytes' own substring search: 2 µs on a 1.2 KB Redis envelope, where the regex
# `\d{19}` took 29 µs (it tries a match at every digit of the ids and base64).
_DIGITS_AS_D = bytes(0x64 if 0x30 <= byte <= 0x39 else 0x2E for byte in range(256))
_LONG_RUN = b"d" * 19


@final
@dataclass(frozen=True, slots=True)
class Serializer:
    """One registered serializer."""

    name: str
    content_type: str
    content_encoding: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]


def _tag(kind: str, value: Any) -> dict[str, Any]:
    return {TYPE_KEY: kind, VALUE_KEY: value}


def _json_default(obj: Any) -> Any:
    # datetime is a date subclass: test it first.
    if isinstance(obj, datetime):
        return _tag("datetime", obj.isoformat())
    if isinstance(obj, date):
        return _tag("date", obj.isoformat())
    if isinstance(obj, time):
        return _tag("time", obj.isoformat())
    if isinstance(obj, Decimal):
        return _tag("decimal", str(obj))
    if isinstance(obj, uuid.UUID):
        return _tag("uuid", {"hex": obj.hex})
    if isinstance(obj, bytes | bytearray | memoryview):
        raw = bytes(obj)
        try:
            return _tag("bytes", raw.decode("utf-8"))
        except UnicodeDecodeError:
            return _tag("base64", base64.b64encode(raw).decode("ascii"))
    to_json = getattr(obj, "__json__", None)
    if callable(to_json):
        return to_json()
    if isinstance(obj, set | frozenset):
        return list(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _decode_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _decode_date(value: Any) -> date:
    # kombu decodes dates through datetime, so a full timestamp is accepted too.
    return datetime.fromisoformat(_decode_str(value)).date()


def _decode_decimal(value: Any) -> Decimal:
    if not isinstance(value, str | int | float):
        raise TypeError(f"expected a number or a string, got {type(value).__name__}")
    try:
        return Decimal(value)
    except ArithmeticError as exc:  # decimal.InvalidOperation is not a ValueError
        raise ValueError(f"{value!r} is not a decimal number") from exc


def _decode_uuid(value: Any) -> uuid.UUID:
    if isinstance(value, dict):
        return uuid.UUID(**value)
    return uuid.UUID(_decode_str(value))


def _decode_base64(value: Any) -> bytes:
    return base64.b64decode(_decode_str(value))


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": lambda v: datetime.fromisoformat(_decode_str(v)),
    "date": _decode_date,
    "time": lambda v: time.fromisoformat(_decode_str(v)),
    "decimal": _decode_decimal,
    "uuid": _decode_uuid,
    "bytes": lambda v: _decode_str(v).encode("utf-8"),
    "base64": _decode_base64,
}


def _decode_tag(obj: dict[str, Any]) -> Any:
    kind = obj[TYPE_KEY]
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        known = ", ".join(sorted(_DECODERS))
        raise SerializationError(f"unknown JSON type tag {kind!r} (known tags: {known})")
    try:
        return decoder(obj[VALUE_KEY])
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"bad value for JSON type tag {kind!r}: {exc}") from exc


def _is_tag(obj: dict[str, Any]) -> bool:
    return len(obj) == 2 and TYPE_KEY in obj and VALUE_KEY in obj


def _untag(root: Any) -> Any:
    """Rebuild typed values anywhere inside a freshly decoded document, in place.

    Iterative, so any depth the parser accepted is fine here too.
    """
    if isinstance(root, dict) and _is_tag(root):
        return _decode_tag(root)
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            # Assigning to an existing key while iterating keeps the dict's size: safe.
            for key, value in node.items():
                if isinstance(value, dict):
                    if _is_tag(value):
                        node[key] = _decode_tag(value)
                    else:
                        stack.append(value)
                elif isinstance(value, list):
                    stack.append(value)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                if isinstance(value, dict):
                    if _is_tag(value):
                        node[index] = _decode_tag(value)
                    else:
                        stack.append(value)
                elif isinstance(value, list):
                    stack.append(value)
    return root


_encoder = json.JSONEncoder(default=_json_default, separators=(",", ":"))


def json_dumps(obj: Any) -> bytes:
    """Encode `obj` as kombu-compatible JSON bytes.

    Raises:
        SerializationError: `obj` holds a value JSON cannot carry.
    """
    try:
        return _encoder.encode(obj).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(f"cannot encode as JSON: {exc}") from exc


def json_loads(data: bytes | str) -> Any:
    """Decode kombu-compatible JSON, rebuilding tagged values.

    Raises:
        SerializationError: `data` is not valid JSON (or nests too deep), or holds a
            type tag that is unknown or carries a bad value.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    # orjson turns integers beyond 64 bits into lossy floats, so a body that may hold one
    # goes to Python's json, which (like a stock Celery peer) reads them exactly.
    if _LONG_RUN not in raw.translate(_DIGITS_AS_D):
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            # Maybe NaN/Infinity, which orjson refuses and Python's json writes.
            value = _python_json_loads(data)
    else:
        value = _python_json_loads(data)
    if _TAG_MARKER in raw:
        return _untag(value)
    return value


def _python_json_loads(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise SerializationError("invalid JSON: nested too deeply") from exc
    except ValueError as exc:  # includes UnicodeDecodeError
        raise SerializationError(f"invalid JSON: {exc}") from exc


def _pickle_loads(data: bytes) -> Any:
    return pickle.loads(data)  # only reached when pickle is in accept_content


def _pickle_dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=4)


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, int):
        raise OverflowError(f"integer {obj} does not fit in 64 bits (use the json serializer)")
    return _json_default(obj)


def _msgpack_dumps(obj: Any) -> bytes:
    import msgpack

    try:
        data: bytes = msgpack.packb(obj, use_bin_type=True, default=_msgpack_default)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"cannot encode as msgpack: {exc}") from exc
    return data


def _msgpack_loads(data: bytes) -> Any:
    import msgpack

    try:
        return _untag(msgpack.unpackb(data, raw=False))
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise SerializationError(f"invalid msgpack: {type(exc).__name__}: {exc}") from exc


_REGISTRY: dict[str, Serializer] = {}
_BY_CONTENT_TYPE: dict[str, Serializer] = {}


def register(serializer: Serializer) -> None:
    """Register a serializer under its name and content type."""
    _REGISTRY[serializer.name] = serializer
    _BY_CONTENT_TYPE[serializer.content_type] = serializer


register(Serializer("json", "application/json", "utf-8", json_dumps, json_loads))
register(
    Serializer("pickle", "application/x-python-serialize", "binary", _pickle_dumps, _pickle_loads)
)
register(Serializer("msgpack", "application/x-msgpack", "binary", _msgpack_dumps, _msgpack_loads))


def auth_not_set_up(_: Any) -> Any:
    """The `auth` serializer until `app.setup_security()` gives it keys (`signing.py`)."""
    raise ImproperlyConfigured(
        "the auth serializer signs with the keys given to app.setup_security(): call it "
        "(with security_key, security_certificate and security_cert_store set) first"
    )


# Celery's signed messages: known by name from the start, so that settings can name it.
register(Serializer("auth", "application/data", "utf-8", auth_not_set_up, auth_not_set_up))


def get_serializer(name: str) -> Serializer:
    """Return the serializer registered as `name`.

    Raises:
        ImproperlyConfigured: no such serializer, or its library is not installed.
    """
    try:
        serializer = _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ImproperlyConfigured(f"unknown serializer {name!r}: use one of {known}") from None
    if name == "msgpack":
        try:
            import msgpack  # noqa: F401
        except ImportError:
            raise ImproperlyConfigured(
                'the msgpack serializer needs msgpack: pip install "celeriac[msgpack]"'
            ) from None
    return serializer


def serializer_for_content_type(content_type: str) -> Serializer | None:
    return _BY_CONTENT_TYPE.get(content_type)


def normalize_accept(accept: Iterable[str], *, setting: str = "accept_content") -> frozenset[str]:
    """Turn an `accept_content` list of names or MIME types into a set of MIME types.

    Args:
        accept: Serializer names (`"json"`) and MIME types (`"application/json"`).
        setting: The setting the list came from, named in the error.

    Raises:
        ImproperlyConfigured: an entry that is neither a serializer name nor a MIME type.
    """
    types: set[str] = set()
    for item in accept:
        if isinstance(item, str) and item in _REGISTRY:
            types.add(_REGISTRY[item].content_type)
        elif isinstance(item, str) and "/" in item:
            types.add(item)
        else:
            known = ", ".join(sorted(_REGISTRY))
            raise ImproperlyConfigured(
                f"{setting} lists {item!r}, which is not a serializer: use one of {known} "
                "or a MIME type such as 'application/json'"
            )
    return frozenset(types)


def dumps(obj: Any, serializer: str) -> tuple[bytes, str, str]:
    """Serialize `obj`; return (body, content_type, content_encoding)."""
    ser = get_serializer(serializer)
    return ser.dumps(obj), ser.content_type, ser.content_encoding


def loads(data: bytes, content_type: str | None, *, accept: frozenset[str]) -> Any:
    """Deserialize `data` if its content type is accepted.

    Raises:
        ContentDisallowed: `content_type` is missing or not in `accept`.
        SerializationError: the payload does not decode.
    """
    if not content_type:
        raise ContentDisallowed("message has no content type; refusing to decode it")
    if content_type not in accept:
        raise ContentDisallowed(
            f"refusing to decode content type {content_type!r}: add it to accept_content "
            "to allow it"
        )
    serializer = _BY_CONTENT_TYPE.get(content_type)
    if serializer is None:
        raise ContentDisallowed(f"no serializer for content type {content_type!r}")
    try:
        return serializer.loads(data)
    except SerializationError:
        raise
    except Exception as exc:  # isolation boundary: any decoder failure is bad input
        raise SerializationError(
            f"cannot decode {content_type} payload: {type(exc).__name__}: {exc}"
        ) from exc


# Compression: header `compression` carries the MIME type (kombu writes that); both ways
# also accept kombu's short aliases.
_COMPRESSORS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "zlib": ("application/x-gzip", zlib.compress),
    "bzip2": ("application/x-bz2", bz2.compress),
    "lzma": ("application/x-lzma", lzma.compress),
}
_COMPRESSOR_ALIASES = {"gzip": "zlib", "bz2": "bzip2", "bzip": "bzip2", "xz": "lzma"}
_COMPRESSOR_BY_MIME = {mime: name for name, (mime, _) in _COMPRESSORS.items()}
# Output is produced in pieces of this size, so a size limit is checked as it grows.
_DECOMPRESS_CHUNK = 256 * 1024


def _compressor_name(kind: str) -> str | None:
    name = _COMPRESSOR_BY_MIME.get(kind) or _COMPRESSOR_ALIASES.get(kind, kind)
    return name if name in _COMPRESSORS else None


def compress(data: bytes, name: str) -> tuple[bytes, str]:
    """Compress with compressor `name` (or its MIME type); return (data, header MIME type).

    Raises:
        ImproperlyConfigured: unknown compressor.
    """
    key = _compressor_name(name)
    if key is None:
        raise ImproperlyConfigured(
            f"unknown compression {name!r}: use one of {', '.join(sorted(_COMPRESSORS))}"
        )
    mime, encode = _COMPRESSORS[key]
    return encode(data), mime


def decompress(data: bytes, kind: str, *, max_size: int | None = None) -> bytes:
    """Undo `compress`; `kind` is the header value (MIME type or alias).

    Args:
        data: The compressed body.
        kind: The `compression` header.
        max_size: Stop as soon as the output passes this many bytes, so a small
            "zip bomb" is refused without ever being inflated in memory.

    Raises:
        MessageTooLarge: the output would be larger than `max_size`.
        SerializationError: unknown compression, or corrupt or truncated data.
    """
    key = _compressor_name(kind)
    if key is None:
        known = ", ".join(sorted(_COMPRESSOR_BY_MIME))
        raise SerializationError(f"unknown compression {kind!r}: known are {known}")
    out = bytearray()
    try:
        if key == "zlib":
            complete = _inflate_zlib(data, out, max_size)
        else:
            complete = _inflate_streams(data, out, max_size, key)
    except (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError) as exc:
        raise SerializationError(f"cannot decompress ({kind}): {exc}") from exc
    if not complete:
        raise SerializationError(f"cannot decompress ({kind}): the data is truncated")
    return bytes(out)


def _check_size(out: bytearray, max_size: int | None) -> None:
    if max_size is not None and len(out) > max_size:
        raise MessageTooLarge(
            f"decompressed body is over {max_size} bytes (task_max_message_size): "
            "refusing to inflate it further"
        )


def _inflate_zlib(data: bytes, out: bytearray, max_size: int | None) -> bool:
    decompressor = zlib.decompressobj()
    pending = data
    while not decompressor.eof:
        chunk = decompressor.decompress(pending, _DECOMPRESS_CHUNK)
        pending = decompressor.unconsumed_tail
        if not chunk and not pending:
            break  # wants more input than there is
        out += chunk
        _check_size(out, max_size)
    return decompressor.eof


def _inflate_streams(data: bytes, out: bytearray, max_size: int | None, key: str) -> bool:
    # bzip2 and lzma data may be several streams back to back; like bz2.decompress and
    # lzma.decompress, trailing bytes that do not start a valid stream are ignored.
    pending = data
    first = True
    while pending:
        decompressor: bz2.BZ2Decompressor | lzma.LZMADecompressor = (
            bz2.BZ2Decompressor() if key == "bzip2" else lzma.LZMADecompressor()
        )
        try:
            out += decompressor.decompress(pending, _DECOMPRESS_CHUNK)
        except (OSError, lzma.LZMAError):
            if first:
                raise
            return True
        _check_size(out, max_size)
        while not decompressor.eof and not decompressor.needs_input:
            out += decompressor.decompress(b"", _DECOMPRESS_CHUNK)
            _check_size(out, max_size)
        if not decompressor.eof:
            return False
        pending = decompressor.unused_data
        first = False
    return True
