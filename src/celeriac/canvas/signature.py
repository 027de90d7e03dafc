"""`Signature`: one task call described as data, and the helpers that build one.

A signature is a dict (`task`, `args`, `kwargs`, `options`, `subtask_type`, `immutable`),
so `dict(sig)` is its wire form and `signature(dict)` rebuilds it, nested canvases included
(spec §1.4). The composites (chain, group, chord) subclass it in their own modules and
register their `subtask_type` here.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.app.task import Task
    from celeriac.result import AsyncResult, EagerResult

__all__ = ["Signature", "maybe_signature", "signature", "signature_list", "subtask"]

R = TypeVar("R")

# Options that identify a member's place in a group or chord: a caller's options never
# override them once set (Celery compat).
_STICKY_OPTIONS = ("group_id",)

# Options that give a signature its identity and its place in an enclosing group or chord.
# Freezing sets them; a composite never passes its own to its members.
MEMBERSHIP_OPTIONS = frozenset({"task_id", "group_id", "group_index", "chord"})


def _shared_options(options: Mapping[str, Any], *drop: str) -> dict[str, Any]:
    """A composite's options that apply to each of its members."""
    return {k: v for k, v in options.items() if k not in MEMBERSHIP_OPTIONS and k not in drop}


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
        # Every value but the scalars is replaced below: a shallow copy is enough.
        data = dict(self)
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
        self.options["link"] = [*signature_list(self.options.get("link")), callback]
        return callback

    def link_error(self, errback: Signature[Any]) -> Signature[Any]:
        """Call `errback` when this task fails."""
        self.options["link_error"] = [*signature_list(self.options.get("link_error")), errback]
        return errback

    def on_error(self, errback: Signature[Any]) -> Signature[R]:
        self.link_error(errback)
        return self

    def __or__(self, other: Any) -> Signature[Any]:  # type: ignore[override]
        """`a | b`: a chain (`task | chain` joins the chain's steps)."""
        from celeriac.canvas.chain import _chain

        if isinstance(other, _chain):
            return _chain(self, *other.tasks, app=self._app)
        if isinstance(other, Signature):
            return _chain(self, _unroll_group(other), app=self._app)
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
        # Celery compat: a frozen signature names the sender's reply queue, so that a
        # step a worker sends later still reports to the client (the rpc:// backend).
        # The queue is the process's rpc reply queue, whatever thread freezes.
        if "reply_to" not in options:
            options["reply_to"] = self.app.default_reply_to()
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

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """`apply_async()` for asyncio code: the publish runs in the loop's default thread
        pool, so a slow or reconnecting broker never stalls the loop."""
        return await asyncio.to_thread(self.apply_async, args, kwargs, **options)

    async def adelay(self, *args: Any, **kwargs: Any) -> AsyncResult[R]:
        """`delay()` for asyncio code (see `aapply_async`)."""
        return await self.aapply_async(args, kwargs)

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

    def _part_count(self) -> int:
        """How many results this reports to a chord whose header holds it (Celery's
        `_descend`): one for a task; a group counts its members, a chain its last step,
        a chord its body."""
        return 1

    def _failure_errbacks(self) -> list[Signature[Any]]:
        """The errbacks to call when this never runs because what it waits for failed."""
        return [
            maybe_signature(e, app=self._app)
            for e in signature_list(self.options.get("link_error"))
        ]

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


class _TaskList(Signature[Any]):
    """A composite over a list of signatures, `kwargs["tasks"]`: chain and group."""

    #: The Celery task name and `subtask_type` of the composite.
    composite: ClassVar[str]

    def __init__(self, *tasks: Any, app: Celeriac | None = None, **options: Any) -> None:
        members = _unroll(tasks, app=app)
        if app is None:
            app = next((s._app for s in members if s._app is not None), None)
        kind = self.composite
        super().__init__(
            f"celery.{kind}", (), {"tasks": members}, options, subtask_type=kind, app=app
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, app: Celeriac | None = None) -> Signature[Any]:
        members = [maybe_signature(t, app=app) for t in data["kwargs"]["tasks"]]
        made = cls(*members, app=app, **dict(data.get("options") or {}))
        made["immutable"] = bool(data.get("immutable", False))
        return made

    @property
    def tasks(self) -> list[Signature[Any]]:
        return cast("list[Signature[Any]]", self.kwargs["tasks"])


def _unroll(tasks: Iterable[Any], *, app: Celeriac | None) -> list[Signature[Any]]:
    if (
        len(tasks := list(tasks)) == 1
        and not isinstance(tasks[0], Mapping)
        and isinstance(tasks[0], Iterable)
    ):
        tasks = list(tasks[0])
    return [maybe_signature(t, app=app) for t in tasks]


def _unroll_group(sig: Signature[Any]) -> Signature[Any]:
    """A group of one is that one member (Celery's `maybe_unroll_group`)."""
    if sig.subtask_type == "group":
        tasks = sig.kwargs.get("tasks") or []
        if len(tasks) == 1:
            return maybe_signature(tasks[0], app=sig._app)
    return sig


def signature_list(value: Any) -> list[Any]:
    """`link`/`link_error` may be one signature (a dict) or several: as a list."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [value]
    return list(value)
