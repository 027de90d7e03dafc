"""`group`: tasks run in parallel; the result is a `GroupResult` in call order.

Every member is published with `group`/`group_index` headers in one round trip through
`app.producer_batch()` (spec §1.9).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from celeriac.canvas.signature import Signature, _new_id, _unroll, maybe_signature

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from celeriac.app.base import Celeriac
    from celeriac.result import GroupResult

__all__ = ["group"]


@Signature.register_type("group")
class group(Signature[Any]):
    """Run tasks in parallel; the result is a `GroupResult` in call order."""

    def __init__(self, *tasks: Any, app: Celeriac | None = None, **options: Any) -> None:
        members = _unroll(tasks, app=app)
        if app is None:
            app = next((s._app for s in members if s._app is not None), None)
        super().__init__(
            "celery.group", (), {"tasks": members}, options, subtask_type="group", app=app
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, app: Celeriac | None = None) -> group:
        members = [maybe_signature(t, app=app) for t in data["kwargs"]["tasks"]]
        made = cls(*members, app=app, **dict(data.get("options") or {}))
        made["immutable"] = bool(data.get("immutable", False))
        return made

    @property
    def tasks(self) -> list[Signature[Any]]:
        return cast("list[Signature[Any]]", self.kwargs["tasks"])

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(t) for t in self.tasks)}])"

    def __len__(self) -> int:
        return len(self.tasks)

    def __call__(self, *args: Any, **options: Any) -> GroupResult:
        """`group(...)(*args)` sends the group (Celery compat)."""
        return self.apply_async(args, **options)

    def members(self) -> list[Signature[Any]]:
        """Members with nested groups flattened into this one (Celery compat)."""
        flat: list[Signature[Any]] = []
        for member in self.tasks:
            if isinstance(member, group):
                flat.extend(member.members())
            else:
                flat.append(member)
        return flat

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        # Celery compat: a group's callback is linked to its first task, immutably.
        if self.tasks:
            self.tasks[0].link(callback.clone().set(immutable=True))
        return callback

    def link_error(self, errback: Signature[Any]) -> Signature[Any]:
        for member in self.tasks:
            member.link_error(errback)
        return errback

    def freeze(  # type: ignore[override]
        self,
        _id: str | None = None,
        *,
        group_id: str | None = None,
        group_index: int | None = None,
        chord: Mapping[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
    ) -> GroupResult:
        from celeriac.result import GroupResult

        gid = _id or self.options.get("task_id") or _new_id()
        self.options["task_id"] = gid
        members = [m.clone() for m in self.members()]
        self.kwargs["tasks"] = members
        results = []
        for index, member in enumerate(members):
            results.append(
                member.freeze(group_id=gid, group_index=index, chord=chord, root_id=root_id)
            )
        return GroupResult(gid, results, app=self._app)

    def apply_async(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        """Publish every member (one round trip where the broker allows)."""
        from celeriac.result import GroupResult

        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        gid = options.pop("task_id", None) or self.options.get("task_id") or _new_id()
        chord_body = options.pop("chord", None)
        options.pop("group_id", None)
        options.pop("group_index", None)
        # A group that is the last step of a chain gets no further steps.
        options.pop("chain", None)
        base_options = {k: v for k, v in self.options.items() if k != "task_id"}
        results = []
        with app.producer_batch():
            for index, member in enumerate(self.members()):
                member = member.clone()
                result = member.freeze(group_id=gid, group_index=index, chord=chord_body)
                member.apply_async(args, kwargs, **{**base_options, **options})
                results.append(result)
        return GroupResult(gid, results, app=app)

    def apply(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        from celeriac.result import GroupResult

        gid = options.pop("task_id", None) or _new_id()
        results = [m.apply(args, kwargs, **options) for m in self.members()]
        return GroupResult(gid, results, app=self._app)

    def skew(self, start: float = 1.0, stop: float | None = None, step: float = 1.0) -> group:
        """Spread the members' countdowns: start, start+step, ..."""
        for index, member in enumerate(self.tasks):
            countdown = start + index * step
            if stop is not None:
                countdown = min(countdown, stop)
            member.set(countdown=countdown)
        return self
