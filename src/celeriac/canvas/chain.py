"""`chain`: tasks run one after the other, each getting the previous result.

Sent as Celery sends it (spec §1.8): every step is frozen, the first task goes out with
the remaining steps reversed in `embed.chain`, and each worker sends the next step when
its task finishes. A group followed by a step becomes a chord.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.canvas.group import group
from celeriac.canvas.signature import (
    Signature,
    _shared_options,
    _TaskList,
    _unroll_group,
    maybe_signature,
    signature_list,
)
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from celeriac.app.base import Celeriac

__all__ = ["_chain", "chain"]


@Signature.register_type("chain")
class _chain(_TaskList):
    """Run tasks one after the other, each getting the previous result."""

    composite = "chain"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, app: Celeriac | None = None) -> Signature[Any]:
        made = super().from_dict(data, app=app)
        made["args"] = list(data.get("args") or ())
        return made

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks) or "chain()"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """`chain(...)(*args)` sends the chain (Celery compat)."""
        return self.apply_async(args, kwargs)

    def __or__(self, other: Any) -> Signature[Any]:  # type: ignore[override]
        """`chain | x`: a longer chain (`chain | chain` joins the steps)."""
        if isinstance(other, _chain):
            return _chain(*self.tasks, *other.tasks, app=self._app, **self.options)
        if isinstance(other, Signature):
            return _chain(*self.tasks, _unroll_group(other), app=self._app, **self.options)
        return NotImplemented

    def _part_count(self) -> int:
        # Celery compat: the last step that reports anything counts for the chain.
        for step in reversed(self.tasks):
            count: int = step._part_count()
            if count:
                return count
        return 0

    def _failure_errbacks(self) -> list[Signature[Any]]:
        errbacks = super()._failure_errbacks()
        if self.tasks:
            errbacks.extend(self.tasks[0]._failure_errbacks())
        return errbacks

    def _steps(self) -> list[Signature[Any]]:
        """Nested chains flattened; a group followed by a step upgraded to a chord."""
        flat: list[Signature[Any]] = []
        for step in self.tasks:
            if isinstance(step, _chain):
                flat.extend(step._steps())
            else:
                flat.append(step.clone())
        steps: list[Signature[Any]] = []
        for step in flat:
            if steps and isinstance(steps[-1], group):
                header = steps.pop()
                from celeriac.canvas.chord import _chord

                # The header keeps its own options (its id is the chord's group id).
                steps.append(_chord(header, step, app=self._app))
            else:
                steps.append(step)
        return steps

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
        steps = self._steps()
        self.kwargs["tasks"] = steps
        if not steps:
            raise ImproperlyConfigured("cannot freeze an empty chain")
        results: list[Any] = []
        for index, step in enumerate(steps):
            last = index == len(steps) - 1
            result = step.freeze(
                _id if last else None,
                group_id=group_id if last else None,
                group_index=group_index if last else None,
                chord=chord if last else None,
                root_id=root_id,
            )
            if results:
                result.parent = results[-1]
            results.append(result)
        return results[-1]

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Send the first step with the rest in its message; return the last step's result."""
        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        steps = self._steps()
        if not steps:
            raise ImproperlyConfigured("cannot apply an empty chain")
        # Membership in an outer group/chord belongs to the last step only.
        membership = {
            k: options.pop(k) for k in ("group_id", "group_index", "chord") if k in options
        }
        task_id = options.pop("task_id", None) or self.options.get("task_id")
        link = options.pop("link", None) or self.options.get("link")
        link_error = options.pop("link_error", None) or self.options.get("link_error")
        results: list[Any] = []
        for index, step in enumerate(steps):
            last = index == len(steps) - 1
            if link_error:
                for errback in signature_list(link_error):
                    step.link_error(maybe_signature(errback, app=app))
            if last:
                if link:
                    for callback in signature_list(link):
                        step.link(maybe_signature(callback, app=app))
                result = step.freeze(
                    task_id,
                    group_id=membership.get("group_id"),
                    group_index=membership.get("group_index"),
                    chord=membership.get("chord"),
                )
            else:
                result = step.freeze()
            if results:
                result.parent = results[-1]
            results.append(result)
        first, rest = steps[0], steps[1:]
        rest_dicts = [dict(s) for s in reversed(rest)]
        options = {**_shared_options(self.options, "link", "link_error"), **options}
        if rest_dicts:
            options["chain"] = rest_dicts
        first.apply_async(args, kwargs, **options)
        return results[-1]

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run every step here, in order."""
        result: Any = None
        previous: list[Any] = list(args or ())
        for index, step in enumerate(self._steps()):
            result = step.apply(previous, kwargs if index == 0 else None, **options)
            if result.state in states.PROPAGATE_STATES:
                return result
            previous = [result.get()]
        return result


# Celery's lower-case public name.
chain = _chain
