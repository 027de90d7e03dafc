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
from celeriac.canvas.signature import Signature, _new_id, _unroll, maybe_signature
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
        body = self.body
        if body is None:
            raise ImproperlyConfigured("a chord needs a body")
        gid = self.header.options.get("task_id") or _new_id()
        self.header.options["task_id"] = gid
        result = body.freeze(
            _id or self.options.get("task_id"),
            group_id=group_id,
            group_index=group_index,
            chord=chord,
            root_id=root_id,
        )
        self.options["task_id"] = body.id
        header_result = self.header.freeze(gid, chord=dict(body), root_id=root_id)
        result.parent = header_result
        return result

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Write the chord size, publish the header; return the body's result."""
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
        outer = {k: options.pop(k) for k in ("group_id", "group_index", "chord") if k in options}
        task_id = options.pop("task_id", None) or self.options.get("task_id")
        body = self.body.clone()
        body_result = body.freeze(
            task_id,
            group_id=outer.get("group_id"),
            group_index=outer.get("group_index"),
            chord=outer.get("chord"),
        )
        rest = options.pop("chain", None)
        if rest:
            # Steps after a chord in a chain run after its body; they were frozen (and
            # carry any outer membership) when the chain was sent.
            body = _chain(body, *[maybe_signature(s, app=app) for s in reversed(rest)], app=app)
        header = self.header
        gid = header.options.get("task_id") or _new_id()
        members = header.members()
        if not members:
            body.apply_async(([],), {}, **options)
            return body_result
        app.backend.set_chord_size(gid, len(members))
        body_dict = dict(body)
        header_results = []
        header_options = {
            **{k: v for k, v in header.options.items() if k != "task_id"},
            **{k: v for k, v in self.options.items() if k != "task_id"},
            **options,
        }
        with app.producer_batch():
            for index, member in enumerate(members):
                member = member.clone()
                result = member.freeze(group_id=gid, group_index=index, chord=body_dict)
                member.apply_async(args, kwargs, **header_options)
                header_results.append(result)
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


# Celery's lower-case public name.
chord = _chord
