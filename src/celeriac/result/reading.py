"""Reading one stored result: its fields, value, exception, and revoking by id."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from celeriac import states
from celeriac.protocol.errors import decode_exception

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.backends.base import ResultMeta
    from celeriac.result.single import AsyncResult


T = TypeVar("T")


class MetaField(Generic[T]):
    """A read-only attribute of an `AsyncResult`: the same field of its stored meta, None
    while nothing is stored."""

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self._name = name

    def __get__(self, result: AsyncResult[Any], owner: type[Any] | None = None) -> T | None:
        meta = result._meta()
        return cast("T | None", getattr(meta, self._name)) if meta is not None else None


def revoke_ids(
    app: Celeriac,
    ids: list[str],
    connection: Any,
    terminate: bool,
    signal: str | int | None,
    wait: bool,
    timeout: float | None,
) -> None:
    from celeriac.app.control import TERM_SIGNAME

    app.control.revoke(
        ids,
        connection=connection,
        terminate=terminate,
        signal=TERM_SIGNAME if signal is None else signal,
        reply=wait,
        timeout=1.0 if timeout is None else timeout,
    )


def value_of(meta: ResultMeta) -> Any:
    if meta.status in states.EXCEPTION_STATES:
        return decode_exception(meta.result)
    return meta.result


def exception_of(meta: ResultMeta) -> Exception:
    exc = decode_exception(meta.result)
    if meta.traceback and not getattr(exc, "remote_traceback", None):
        with contextlib.suppress(AttributeError):  # classes with __slots__
            exc.remote_traceback = meta.traceback  # type: ignore[attr-defined]
    return exc
