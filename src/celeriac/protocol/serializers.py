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

from celeriac.exceptions import ContentDisallowed, ImproperlyConfigured, SerializationError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "Serializer",
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


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "decimal": Decimal,
    "uuid": lambda v: uuid.UUID(**v) if isinstance(v, dict) else uuid.UUID(v),
    "bytes": lambda v: v.encode("utf-8"),
    "base64": lambda v: base64.b64decode(v),
}


def _untag(obj: Any) -> Any:
    """Rebuild typed values anywhere inside a decoded JSON document."""
    if isinstance(obj, dict):
        if len(obj) == 2 and TYPE_KEY in obj and VALUE_KEY in obj:
            kind = obj[TYPE_KEY]
            decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
            if decoder is None:
                raise SerializationError(f"unknown JSON type tag {kind!r}")
            try:
                return decoder(obj[VALUE_KEY])
            except (TypeError, ValueError) as exc:
                raise SerializationError(f"bad value for JSON type tag {kind!r}: {exc}") from exc
        return {key: _untag(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_untag(value) for value in obj]
    return obj


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
        SerializationError: `data` is not valid JSON (or nests too deep).
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        # orjson refuses NaN/Infinity and integers beyond 64 bits, which Python's
        # json module (and so a stock Celery peer) may write.
        try:
            value = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise SerializationError(f"invalid JSON: {exc}") from exc
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if _TAG_MARKER in raw:
        try:
            return _untag(value)
        except RecursionError as exc:
            raise SerializationError("invalid JSON: nested too deeply") from exc
    return value


def _pickle_loads(data: bytes) -> Any:
    return pickle.loads(data)  # only reached when pickle is in accept_content


def _pickle_dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=4)


def _msgpack_dumps(obj: Any) -> bytes:
    import msgpack

    try:
        data: bytes = msgpack.packb(obj, use_bin_type=True, default=_json_default)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"cannot encode as msgpack: {exc}") from exc
    return data


def _msgpack_loads(data: bytes) -> Any:
    import msgpack

    try:
        return _untag(msgpack.unpackb(data, raw=False))
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise SerializationError(f"invalid msgpack: {exc}") from exc


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


def normalize_accept(accept: Iterable[str]) -> frozenset[str]:
    """Turn an `accept_content` list of names or MIME types into a set of MIME types.

    Raises:
        ImproperlyConfigured: a name that is neither a serializer nor a MIME type.
    """
    types: set[str] = set()
    for item in accept:
        if item in _REGISTRY:
            types.add(_REGISTRY[item].content_type)
        elif "/" in item:
            types.add(item)
        else:
            known = ", ".join(sorted(_REGISTRY))
            raise ImproperlyConfigured(
                f"accept_content lists {item!r}, which is not a serializer: use one of {known} "
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


# Compression: header `compression` carries the MIME type (kombu writes that); decoders
# also accept the short aliases.
_COMPRESSORS: dict[str, tuple[str, Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "zlib": ("application/x-gzip", zlib.compress, zlib.decompress),
    "bzip2": ("application/x-bz2", bz2.compress, bz2.decompress),
    "lzma": ("application/x-lzma", lzma.compress, lzma.decompress),
}
_COMPRESSOR_ALIASES = {"gzip": "zlib", "bz2": "bzip2", "xz": "lzma"}
_BY_COMPRESSION_TYPE = {mime: (dec) for mime, _, dec in _COMPRESSORS.values()}


def compress(data: bytes, name: str) -> tuple[bytes, str]:
    """Compress with compressor `name`; return (data, MIME type for the header).

    Raises:
        ImproperlyConfigured: unknown compressor.
    """
    key = _COMPRESSOR_ALIASES.get(name, name)
    try:
        mime, encode, _ = _COMPRESSORS[key]
    except KeyError:
        raise ImproperlyConfigured(
            f"unknown compression {name!r}: use one of {', '.join(sorted(_COMPRESSORS))}"
        ) from None
    return encode(data), mime


def decompress(data: bytes, kind: str) -> bytes:
    """Undo `compress`; `kind` is the header value (MIME type or alias).

    Raises:
        SerializationError: unknown compression or corrupt data.
    """
    decoder = _BY_COMPRESSION_TYPE.get(kind)
    if decoder is None:
        key = _COMPRESSOR_ALIASES.get(kind, kind)
        if key in _COMPRESSORS:
            decoder = _COMPRESSORS[key][2]
    if decoder is None:
        raise SerializationError(f"unknown compression {kind!r}")
    try:
        return decoder(data)
    except (zlib.error, OSError, lzma.LZMAError, ValueError) as exc:
        raise SerializationError(f"cannot decompress ({kind}): {exc}") from exc
