"""`chord`: a header group, then the body called with the list of header results.

Sent as Celery sends it to a backend with a native join (spec §1.10): the chord size is
written to the result backend before the header is published (one round trip), header
members carry the body in `embed.chord`, and the worker whose part completes the header
starts the body. Nobody polls: no `celery.chord_unlock` task is ever sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from celeriac.canvas.chain import _chain
from celeriac.canvas.group import group
from celeriac.canvas.signature import (
    Signature,
    _new_id,
    _shared_options,
    _unroll,
    maybe_signature,
    signature_list,
)
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac

__all__ = ["_chord", "chord"]


@Signature.register_type("chord")
class _chord(Signature[Any]):
    """Run a header group, then the body with the list of header results."""

    def __init__(
        self,
        header: Any,
        body: Signature[Any] | Mapping[str, Any] | None = None,
        *,
        app: Celeriac | None = None,
        **options: Any,
    ) -> None:
        if isinstance(header, group):
            header_group = header
        else:
            header_group = group(*_unroll([header], app=app), app=app)
        body_sig = maybe_signature(body, app=app) if body is not None else None
        if app is None:
            app = header_group._app or (body_sig._app if body_sig is not None else None)
        super().__init__(
            "celery.chord",
            (),
            {"header": header_group, "body": body_sig, "kwargs": {}},
            options,
            subtask_type="chord",
            app=app,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, app: Celeriac | None = None) -> _chord:
        kwargs = data["kwargs"]
        header = kwargs["header"]
        header_sig = (
            maybe_signature(header, app=app)
            if isinstance(header, Mapping)
            else group(*[maybe_signature(h, app=app) for h in header], app=app)
        )
        body = kwargs.get("body")
        made = cls(
            header_sig,
            maybe_signature(body, app=app) if body else None,
            app=app,
            **dict(data.get("options") or {}),
        )
        made["args"] = list(data.get("args") or ())
        made["immutable"] = bool(data.get("immutable", False))
        return made

    @property
    def header(self) -> group:
        return cast("group", self.kwargs["header"])

    @property
    def body(self) -> Signature[Any] | None:
        return cast("Signature[Any] | None", self.kwargs["body"])

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def __call__(self, body: Signature[Any] | None = None, **options: Any) -> Any:
        """`chord(header)(body)`: send with this body."""
        if body is not None:
            self.kwargs["body"] = maybe_signature(body, app=self._app)
        return self.apply_async((), {}, **options)

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        if self.body is None:
            raise ImproperlyConfigured("a chord needs a body before it can be linked")
        return self.body.link(callback)

    def link_error(self, errback: Signature[Any]) -> Signature[Any]:
        if self.body is None:
            raise ImproperlyConfigured("a chord needs a body before it can be linked")
        return self.body.link_error(errback)

    def __or__(self, other: Any) -> Signature[Any]:  # type: ignore[override]
        """`chord | sig`: the same chord with `sig` chained after its body."""
        if isinstance(other, Signature) and not isinstance(other, group | _chain):
            if self.body is None:
                raise ImproperlyConfigured("a chord needs a body before it can be chained")
            made = cast("_chord", self.clone())
            made.kwargs["body"] = made.body | other  # type: ignore[operator]
            return made
        return super().__or__(other)

    def _part_count(self) -> int:
        return self.body._part_count() if self.body is not None else 0

    def _failure_errbacks(self) -> list[Signature[Any]]:
        errbacks = super()._failure_errbacks()
        if self.body is not None:
            errbacks.extend(self.body._failure_errbacks())
        return errbacks

    def freeze(
        self,
        _id: str | None = None,
        *,
        group_id: str | None = None,
        group_index: int | None = None,
        chord: Mapping[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
    ) -> Any:
        """Fix the body's id (the chord's result) and the header's; return the body's
        result, whose `parent` is the header's `GroupResult`."""
        body = self.body
        if body is None:
            raise ImproperlyConfigured("a chord needs a body")
        gid = self.header.options.get("task_id") or _new_id()
        result = body.freeze(
            _id or self.options.get("task_id"),
            group_id=group_id,
            group_index=group_index,
            chord=chord,
            root_id=root_id,
        )
        self.options["task_id"] = body.id
        result.parent = self.header.freeze(gid, chord=dict(body), root_id=root_id)
        return result

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Write the chord size, publish the header in one round trip; return the
        body's result."""
        from celeriac.result import GroupResult

        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        if self.body is None:
            raise ImproperlyConfigured("a chord needs a body: chord(header)(body)")
        if not app.backend.supports_native_join:
            raise ImproperlyConfigured(
                f"the result backend {app.backend.safe_url()} cannot join chords: use a "
                "Redis or SQLite result backend"
            )
        # The chord's own place in an enclosing group or chord belongs to its body.
        outer = {k: options.pop(k) for k in ("group_id", "group_index", "chord") if k in options}
        task_id = options.pop("task_id", None) or self.options.get("task_id")
        rest = options.pop("chain", None)
        # Celery compat: the chord's options (queue, priority, ...) apply to its header
        # and its body alike; callbacks and errbacks given here belong to the body.
        shared = {**_shared_options(self.options), **options}
        link = signature_list(shared.pop("link", None))
        link_error = signature_list(shared.pop("link_error", None))
        body = self.body.clone()
        body.options.update({k: v for k, v in shared.items() if k not in ("parent_id", "root_id")})
        for callback in link:
            body.link(maybe_signature(callback, app=app))
        for errback in link_error:
            body.link_error(maybe_signature(errback, app=app))
        body_result = body.freeze(
            task_id,
            group_id=outer.get("group_id"),
            group_index=outer.get("group_index"),
            chord=outer.get("chord"),
        )
        if rest:
            # Steps after a chord in a chain run after its body; they were frozen (and
            # carry any outer membership) when the chain was sent.
            body = _chain(body, *[maybe_signature(s, app=app) for s in reversed(rest)], app=app)
        header = self.header
        gid = header.options.get("task_id") or _new_id()
        size = header._part_count()
        if size == 0:
            # Celery compat: an empty header calls the body at once, with [].
            body.apply_async(([],), {}, **_parentage(options))
            return body_result
        members, header_results = header._frozen_members(
            gid, group_id=gid, group_index=0, chord=dict(body)
        )
        header_options = {**_shared_options(header.options), **shared}
        # The size is written before any part can report (spec §1.10).
        app.backend.set_chord_size(gid, size)
        with app.producer_batch():
            for member in members:
                member.apply_async(args, kwargs, **header_options)
        body_result.parent = GroupResult(gid, header_results, app=app)
        return body_result

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        if self.body is None:
            raise ImproperlyConfigured("a chord needs a body")
        header_result = self.header.apply(args, kwargs)
        values = header_result.join(propagate=True)
        return self.body.apply((values,), {}, **options)


def _parentage(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in ("parent_id", "root_id")}


# Celery's lower-case public name.
chord = _chord
