"""`xmap`, `xstarmap` and `chunks`: one task applied over many items.

`xmap`/`xstarmap` are one message for the built-in `celery.map`/`celery.starmap` task;
`chunks` is a group of `celery.starmap` messages, one per chunk (spec §1.4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac.canvas.group import group
from celeriac.canvas.signature import Signature, maybe_signature
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from celeriac.app.base import Celeriac
    from celeriac.result import GroupResult

__all__ = ["chunks", "xmap", "xstarmap"]


def xmap(
    task: Signature[Any], items: Iterable[Any], *, app: Celeriac | None = None
) -> Signature[Any]:
    """One task (`celery.map`) applying `task` to each item in turn."""
    # Celery compat: immutable, so a parent's result in a chain is not passed to it.
    return Signature(
        "celery.map",
        (),
        {"task": dict(task), "it": list(items)},
        immutable=True,
        app=app or task._app,
    )


def xstarmap(
    task: Signature[Any], items: Iterable[Sequence[Any]], *, app: Celeriac | None = None
) -> Signature[Any]:
    """One task (`celery.starmap`) applying `task(*item)` to each item in turn."""
    return Signature(
        "celery.starmap",
        (),
        {"task": dict(task), "it": [list(i) for i in items]},
        immutable=True,
        app=app or task._app,
    )


class chunks(Signature[Any]):
    """Split `items` into chunks of `n`; each chunk is one `celery.starmap` task."""

    def __init__(
        self,
        task: Signature[Any],
        items: Iterable[Sequence[Any]],
        n: int,
        *,
        app: Celeriac | None = None,
    ) -> None:
        if n < 1:
            raise ImproperlyConfigured("chunks need a size of at least 1")
        super().__init__(
            "celery.chunks",
            (),
            {"task": dict(task), "it": [list(i) for i in items], "n": n},
            immutable=True,
            app=app or task._app,
        )

    def group(self) -> group:
        """The group of `celery.starmap` tasks this splits into."""
        task = maybe_signature(self.kwargs["task"], app=self._app)
        items = self.kwargs["it"]
        size = self.kwargs["n"]
        parts = [items[i : i + size] for i in range(0, len(items), size)]
        return group(*[xstarmap(task, part, app=self._app) for part in parts], app=self._app)

    def apply_async(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        return self.group().apply_async(args, kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async()

    def apply(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        return self.group().apply(args, kwargs, **options)
