"""`group`: tasks run in parallel; the result is a `GroupResult` in call order.

Every member is published with `group`/`group_index` headers in one round trip through
`app.producer_batch()` (spec §1.9).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from celeriac.canvas.signature import (
    Signature,
    _new_id,
    _shared_options,
    _TaskList,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from celeriac.result import GroupResult

__all__ = ["group"]


@Signature.register_type("group")
class group(_TaskList):
    """Run tasks in parallel; the result is a `GroupResult` in call order."""

    composite = "group"

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

    def __or__(self, other: Any) -> Signature[Any]:  # type: ignore[override]
        """`group | sig`: a chord with `sig` as its body (Celery compat)."""
        if isinstance(other, Signature):
            from celeriac.canvas.chord import _chord

            return _chord(self, other, app=self._app)
        return NotImplemented

    def _part_count(self) -> int:
        return sum(member._part_count() for member in self.tasks)

    def _failure_errbacks(self) -> list[Signature[Any]]:
        # Every member that never runs counts as failed (Celery compat: a failed chord
        # with a group body calls the errbacks of each member).
        errbacks = super()._failure_errbacks()
        for member in self.tasks:
            errbacks.extend(member._failure_errbacks())
        return errbacks

    def _frozen_members(
        self,
        gid: str,
        *,
        group_id: str | None,
        group_index: int | None,
        chord: Mapping[str, Any] | None,
        root_id: str | None = None,
    ) -> tuple[list[Signature[Any]], list[Any]]:
        """Copies of the members frozen into this group, and their results.

        Members report as group `group_id` (an enclosing chord's, when this group is
        part of its header) or else `gid`. Positions count chord parts, starting at
        `group_index`: a member that reports several parts (a nested group, a chain
        ending in one) takes that many, so an enclosing chord's body gets every part
        in header order.
        """
        members: list[Signature[Any]] = []
        results: list[Any] = []
        index = group_index or 0
        for member in self.members():
            member = member.clone()
            results.append(
                member.freeze(
                    group_id=group_id or gid, group_index=index, chord=chord, root_id=root_id
                )
            )
            members.append(member)
            index += member._part_count()
        return members, results

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
        """Fix the group id and every member's id and place; return the `GroupResult`."""
        from celeriac.result import GroupResult

        options = self.options
        if _id is not None:
            options["task_id"] = _id
        gid = options.setdefault("task_id", _new_id())
        # Remembered in the options so that a worker applying this group later (the
        # last step of a chain) keeps the membership it was frozen with.
        if group_id is not None:
            options["group_id"] = group_id
        if group_index is not None:
            options["group_index"] = group_index
        if chord is not None:
            options["chord"] = dict(chord)
        members, results = self._frozen_members(
            gid,
            group_id=options.get("group_id"),
            group_index=options.get("group_index"),
            chord=options.get("chord"),
            root_id=root_id,
        )
        self.kwargs["tasks"] = members
        return GroupResult(gid, results, app=self._app)

    async def aapply_async(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        """`apply_async()` for asyncio code; `await result.aget()` waits for the members."""
        return await asyncio.to_thread(self.apply_async, args, kwargs, **options)

    async def adelay(self, *args: Any, **kwargs: Any) -> GroupResult:  # type: ignore[override]
        return await self.aapply_async(args, kwargs)

    def apply_async(  # type: ignore[override]
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        """Publish every member in one round trip (`app.producer_batch()`)."""
        from celeriac.result import GroupResult

        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        own = self.options
        gid = options.pop("task_id", None) or own.get("task_id") or _new_id()
        group_id = options.pop("group_id", None) or own.get("group_id")
        group_index = options.pop("group_index", None)
        if group_index is None:
            group_index = own.get("group_index")
        chord = options.pop("chord", None) or own.get("chord")
        # A group is never followed by a step: a chain turns "group, step" into a chord.
        options.pop("chain", None)
        member_options = {**_shared_options(own), **options}
        members, results = self._frozen_members(
            gid, group_id=group_id, group_index=group_index, chord=chord
        )
        with app.producer_batch():
            for member in members:
                member.apply_async(args, kwargs, **member_options)
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
