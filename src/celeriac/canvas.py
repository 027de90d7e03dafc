"""Workflows: `Signature`, `chain`, `group`, `chord`, `chunks`, `xmap`, `xstarmap`.

A signature is a dict (`task`, `args`, `kwargs`, `options`, `subtask_type`, `immutable`),
so `dict(sig)` is its wire form and `signature(dict)` rebuilds it, nested canvases included
(spec §1.4). Sending follows Celery (spec §1.8-1.10): a chain sends its first task with
the remaining steps reversed in `embed.chain`; a group publishes every member with
`group`/`group_index` headers (in one round trip); a chord writes its size to the result
backend before publishing its header, whose members carry the body in `embed.chord`, and
the worker that finishes the last part starts the body. Nobody polls.
"""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

from celeriac import states
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.app.task import Task
    from celeriac.result import AsyncResult, EagerResult, GroupResult

__all__ = [
    "Signature",
    "chain",
    "chord",
    "chunks",
    "group",
    "maybe_signature",
    "signature",
    "xmap",
    "xstarmap",
]

R = TypeVar("R")

# Options that identify a member's place in a group or chord: a caller's options never
# override them once set (Celery compat).
_STICKY_OPTIONS = ("group_id",)


def _new_id() -> str:
    return str(uuid.uuid4())


class Signature(dict[str, Any], Generic[R]):
    """A task call described as data: send it later, pass it around, compose it.

    Args:
        task: Task name, a `Task`, or a signature dict to rebuild.
        args: Partial positional arguments.
        kwargs: Partial keyword arguments.
        options: `apply_async` options (queue, countdown, link, ...).
        immutable: Ignore the parent's result and extra arguments when applied.
        app: The app to send with (default: the task's app, else the current app).
    """

    TYPES: ClassVar[dict[str, type[Signature[Any]]]] = {}
    _app: Celeriac | None

    def __init__(
        self,
        task: str | Task[Any, R] | Mapping[str, Any] | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
        subtask_type: str | None = None,
        app: Celeriac | None = None,
        **extra_options: Any,
    ) -> None:
        if isinstance(task, Mapping):
            data = task
            super().__init__(
                task=data["task"],
                args=list(data.get("args") or ()),
                kwargs=dict(data.get("kwargs") or {}),
                options=dict(data.get("options") or {}),
                subtask_type=data.get("subtask_type"),
                immutable=bool(data.get("immutable", False)),
            )
            self._app = app or getattr(data, "_app", None)
            return
        name: str | None
        if task is None or isinstance(task, str):
            name = task
        else:
            name = task.name
            app = app or task._app
        if name is None:
            raise ImproperlyConfigured("a signature needs a task name or a task")
        super().__init__(
            task=name,
            args=list(args or ()),
            kwargs=dict(kwargs or {}),
            options={**(options or {}), **extra_options},
            subtask_type=subtask_type,
            immutable=immutable,
        )
        self._app = app

    @classmethod
    def register_type(cls, name: str) -> Any:
        def register(subclass: type[Signature[Any]]) -> type[Signature[Any]]:
            cls.TYPES[name] = subclass
            return subclass

        return register

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, app: Celeriac | None = None) -> Signature[Any]:
        """Rebuild the right signature class from its dict form."""
        if isinstance(data, Signature):
            return data
        kind = data.get("subtask_type")
        target = cls.TYPES.get(kind) if kind else None
        if target is not None:
            return target.from_dict(data, app=app)
        return Signature(data, app=app)

    # -- fields -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return cast("str", self["task"])

    task = name

    @property
    def args(self) -> list[Any]:
        return cast("list[Any]", self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        return cast("dict[str, Any]", self["kwargs"])

    @property
    def options(self) -> dict[str, Any]:
        return cast("dict[str, Any]", self["options"])

    @property
    def immutable(self) -> bool:
        return bool(self.get("immutable"))

    @property
    def subtask_type(self) -> str | None:
        return cast("str | None", self.get("subtask_type"))

    @property
    def id(self) -> str | None:
        """The task id once frozen (or set with `task_id=`)."""
        return cast("str | None", self.options.get("task_id"))

    @property
    def app(self) -> Celeriac:
        if self._app is None:
            from celeriac.app.base import current_app

            return current_app()
        return self._app

    @property
    def type(self) -> Task[Any, Any]:
        """The registered task this signature calls."""
        return self.app.tasks[self.name]

    def __json__(self) -> dict[str, Any]:
        return dict(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return signature, (dict(self),)

    def __repr__(self) -> str:
        args = ", ".join(
            [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        )
        return f"{self.name}({args}){'!' if self.immutable else ''}"

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature[R]:
        clone = type(self).from_dict(copy.deepcopy(dict(self), memo), app=self._app)
        return cast("Signature[R]", clone)

    # -- building -------------------------------------------------------------------

    def _merge(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        merged_options = dict(self.options)
        if options:
            for key, value in options.items():
                if key in _STICKY_OPTIONS and merged_options.get(key) is not None:
                    continue
                merged_options[key] = value
        if self.immutable:
            return list(self.args), dict(self.kwargs), merged_options
        merged_args = [*(args or ()), *self.args]
        merged_kwargs = {**self.kwargs, **(kwargs or {})}
        return merged_args, merged_kwargs, merged_options

    def clone(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature[R]:
        """A copy with extra partial arguments (prepended) and options merged in."""
        new_args, new_kwargs, new_options = self._merge(args, kwargs, options)
        data = copy.deepcopy(dict(self))
        data["args"], data["kwargs"], data["options"] = new_args, new_kwargs, new_options
        if self.immutable:
            data["args"], data["kwargs"] = copy.deepcopy(self.args), copy.deepcopy(self.kwargs)
        return cast("Signature[R]", type(self).from_dict(data, app=self._app))

    partial = clone

    def set(self, immutable: bool | None = None, **options: Any) -> Signature[R]:
        """Set options in place (returns self, for chaining)."""
        if immutable is not None:
            self["immutable"] = immutable
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = immutable

    def link(self, callback: Signature[Any]) -> Signature[Any]:
        """Call `callback` with this task's result when it succeeds."""
        self.options.setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: Signature[Any]) -> Signature[Any]:
        """Call `errback` when this task fails."""
        self.options.setdefault("link_error", []).append(errback)
        return errback

    def on_error(self, errback: Signature[Any]) -> Signature[R]:
        self.link_error(errback)
        return self

    def __or__(self, other: Any) -> Signature[Any]:  # type: ignore[override]
        if isinstance(other, Signature):
            if isinstance(self, _chain):
                return _chain(*self.tasks, other, app=self._app)
            return _chain(self, other, app=self._app)
        return NotImplemented

    def __invert__(self) -> Any:
        return self.apply_async().get()

    # -- freezing and sending -------------------------------------------------------

    def freeze(
        self,
        _id: str | None = None,
        *,
        group_id: str | None = None,
        group_index: int | None = None,
        chord: Mapping[str, Any] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
    ) -> AsyncResult[R]:
        """Fix this signature's task id (and its group/chord membership); return its result."""
        from celeriac.result import AsyncResult

        options = self.options
        if _id is not None:
            options["task_id"] = _id
        options.setdefault("task_id", _new_id())
        if group_id is not None:
            options["group_id"] = group_id
        if group_index is not None:
            options["group_index"] = group_index
        if chord is not None:
            options["chord"] = dict(chord)
        if root_id is not None:
            options.setdefault("root_id", root_id)
        if parent_id is not None:
            options.setdefault("parent_id", parent_id)
        return AsyncResult(options["task_id"], app=self._app, task_name=self.name)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the call (extra args prepended, kwargs and options merged)."""
        merged_args, merged_kwargs, merged_options = self._merge(args, kwargs, options)
        app = self.app
        task = app.tasks.get(self.name)
        if task is not None:
            return cast(
                "AsyncResult[R]", task.apply_async(merged_args, merged_kwargs, **merged_options)
            )
        if app.conf.task_always_eager:
            raise ImproperlyConfigured(
                f"cannot run {self.name} eagerly: it is not registered in this process"
            )
        return cast(
            "AsyncResult[R]", app.send_task(self.name, merged_args, merged_kwargs, **merged_options)
        )

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        return self.apply_async(args, kwargs)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> EagerResult[R]:
        """Run here and now (see `Task.apply`)."""
        merged_args, merged_kwargs, merged_options = self._merge(args, kwargs, options)
        return cast("EagerResult[R]", self.type.apply(merged_args, merged_kwargs, **merged_options))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task body in this process with the partial arguments applied."""
        merged_args, merged_kwargs, _ = self._merge(args, kwargs)
        return self.type(*merged_args, **merged_kwargs)

    # -- helpers used by composites ---------------------------------------------------

    def _leaf_for_membership(self) -> Signature[Any]:
        """The signature that reports this one's result to a group or chord."""
        return self

    def flatten_links(self) -> list[Signature[Any]]:
        links = [maybe_signature(s, app=self._app) for s in self.options.get("link") or ()]
        return [self, *itertools.chain.from_iterable(s.flatten_links() for s in links)]


def maybe_signature(value: Any, *, app: Celeriac | None = None) -> Signature[Any]:
    """A `Signature` from a signature or its dict form."""
    if isinstance(value, Signature):
        if app is not None and value._app is None:
            value._app = app
        return value
    if isinstance(value, Mapping):
        return Signature.from_dict(value, app=app)
    raise ImproperlyConfigured(f"expected a signature, got {value!r}")


def signature(
    varies: str | Task[Any, R] | Mapping[str, Any],
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    immutable: bool = False,
    app: Celeriac | None = None,
    **extra_options: Any,
) -> Signature[R]:
    """Build a signature from a task name, a task, or a signature dict."""
    if isinstance(varies, Mapping):
        return cast("Signature[R]", Signature.from_dict(varies, app=app))
    return Signature(varies, args, kwargs, options, immutable=immutable, app=app, **extra_options)


subtask = signature


def _unroll(tasks: Iterable[Any], *, app: Celeriac | None) -> list[Signature[Any]]:
    if (
        len(tasks := list(tasks)) == 1
        and not isinstance(tasks[0], Mapping)
        and isinstance(tasks[0], Iterable)
    ):
        tasks = list(tasks[0])
    return [maybe_signature(t, app=app) for t in tasks]


# -- chain --------------------------------------------------------------------------


@Signature.register_type("chain")
class _chain(Signature[Any]):
    """Run tasks one after the other, each getting the previous result."""

    def __init__(self, *tasks: Any, app: Celeriac | None = None, **options: Any) -> None:
        steps = _unroll(tasks, app=app)
        if app is None:
            app = next((s._app for s in steps if s._app is not None), None)
        super().__init__(
            "celery.chain", (), {"tasks": steps}, options, subtask_type="chain", app=app
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, app: Celeriac | None = None) -> _chain:
        steps = [maybe_signature(t, app=app) for t in data["kwargs"]["tasks"]]
        made = cls(*steps, app=app, **dict(data.get("options") or {}))
        made["args"] = list(data.get("args") or ())
        made["immutable"] = bool(data.get("immutable", False))
        return made

    @property
    def tasks(self) -> list[Signature[Any]]:
        return cast("list[Signature[Any]]", self.kwargs["tasks"])

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks) or "chain()"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """`chain(...)(*args)` sends the chain (Celery compat)."""
        return self.apply_async(args, kwargs)

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
                steps.append(_chord(header, step, app=self._app, **header.options))
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
                for errback in _as_list(link_error):
                    step.link_error(maybe_signature(errback, app=app))
            if last:
                if link:
                    for callback in _as_list(link):
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
        options = {
            **{k: v for k, v in self.options.items() if k not in ("task_id", "link", "link_error")},
            **options,
        }
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


# -- group --------------------------------------------------------------------------


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


# -- chord --------------------------------------------------------------------------


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


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [value]
    return list(value)


# Public constructors with Celery's lower-case names.
chain = _chain
chord = _chord


def xmap(
    task: Signature[Any], items: Iterable[Any], *, app: Celeriac | None = None
) -> Signature[Any]:
    """One task (`celery.map`) applying `task` to each item in turn."""
    return Signature(
        "celery.map", (), {"task": dict(task), "it": list(items)}, app=app or task._app
    )


def xstarmap(
    task: Signature[Any], items: Iterable[Sequence[Any]], *, app: Celeriac | None = None
) -> Signature[Any]:
    """One task (`celery.starmap`) applying `task(*item)` to each item in turn."""
    return Signature(
        "celery.starmap",
        (),
        {"task": dict(task), "it": [list(i) for i in items]},
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
