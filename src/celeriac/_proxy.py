"""`current_app` and `current_task`: Celery's proxies, read at each use.

`current_app.conf.broker_url` and `current_task.request.id` reach whatever is current
in this thread or coroutine at the moment they are read (`current_app()` also returns
the app, as celeriac always allowed). `current_task` is falsy outside a task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from celeriac.app.base import Celeriac

__all__ = ["AppProxy", "Proxy", "TaskProxy"]


class Proxy:
    """Forwards attribute access to what `resolve()` returns now."""

    __slots__ = ("_resolve",)

    def __init__(self, resolve: Callable[[], Any]) -> None:
        object.__setattr__(self, "_resolve", resolve)

    def _get_current_object(self) -> Any:
        """The object behind the proxy right now (Celery's name)."""
        return self._resolve()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get_current_object(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._get_current_object(), name, value)

    def __bool__(self) -> bool:
        return bool(self._get_current_object())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Proxy):
            other = other._get_current_object()
        return bool(self._get_current_object() == other)

    def __hash__(self) -> int:
        return hash(self._get_current_object())

    def __repr__(self) -> str:
        return repr(self._get_current_object())


class AppProxy(Proxy):
    """`current_app`: the current app; calling it returns the app itself."""

    __slots__ = ()

    def __call__(self) -> Celeriac:
        app: Celeriac = self._get_current_object()
        return app


class TaskProxy(Proxy):
    """`current_task`: the running task (None outside one); calling it calls the task."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._get_current_object()(*args, **kwargs)
