"""`@app.task(pydantic=True)`: arguments annotated with pydantic models, as Celery 5.5+.

```python
class Order(BaseModel):
    id: int
    total: Decimal

@app.task(pydantic=True)
def charge(order: Order) -> Receipt:
    ...

charge.delay(Order(id=1, total="9.99"))   # sent as a dict, rebuilt as an Order
```

In the worker, each argument whose annotation is a `BaseModel` (or `Model | None`) is
validated into the model (`model_validate`, with `pydantic_strict` and
`pydantic_context`); a returned model whose class matches the return annotation is
stored as `model_dump(mode="json", **pydantic_dump_kwargs)`. On the sending side, a
model argument is sent as its dump when the task would rebuild an equal model (others
are left for the serializer, which refuses them). pydantic is needed only where
`pydantic=True` tasks are defined: `pip install "celeriac[pydantic]"`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import types
import typing
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from celeriac.app.task import Task

__all__ = ["PydanticCall"]


def _unwrap_optional(annotation: Any) -> Any:
    """`X` for `X | None` / `Optional[X]`, else None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1 and len(typing.get_args(annotation)) == 2:
            return members[0]
    return None


class PydanticCall:
    """Validates a task's model arguments and dumps its model result."""

    def __init__(self, task: Task[Any, Any], fun: Callable[..., Any]) -> None:
        try:
            pydantic = importlib.import_module("pydantic")
        except ModuleNotFoundError as exc:
            raise ImproperlyConfigured(
                f"{task.name}: pydantic=True needs pydantic: pip install 'celeriac[pydantic]'"
            ) from exc
        self.base_model: type[Any] = pydantic.BaseModel
        self.task = task
        self.strict = bool(task.pydantic_strict)
        self.context = dict(task.pydantic_context or {})
        self.dump_kwargs = {"mode": "json", **(task.pydantic_dump_kwargs or {})}
        self.signature = inspect.signature(fun)
        try:
            self.hints: dict[str, Any] = typing.get_type_hints(fun)
        except (NameError, AttributeError, TypeError):
            self.hints = {}
        # A bound task's first parameter is the task itself: never a model.
        params = list(self.signature.parameters.values())
        self.bound_offset = 1 if task.bind and params else 0

    def _annotation(self, name: str) -> Any:
        if name in self.hints:
            return self.hints[name]
        parameter = self.signature.parameters.get(name)
        return parameter.annotation if parameter is not None else inspect.Parameter.empty

    def _model_for(self, annotation: Any, value: Any) -> type[Any] | None:
        inner = _unwrap_optional(annotation)
        if inner is not None and value is not None:
            annotation = inner
        if isinstance(annotation, type) and issubclass(annotation, self.base_model):
            return annotation
        return None

    def _validate(self, model: type[Any], value: Any) -> Any:
        context = {**self.context, "celery_app": self.task.app, "celery_task_name": self.task.name}
        return model.model_validate(value, strict=self.strict, context=context)

    def wrap(self, fun: Callable[..., Any]) -> Callable[..., Any]:
        """`fun` with its model arguments validated and its model result dumped."""
        if inspect.iscoroutinefunction(fun):

            @functools.wraps(fun)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                bound = self._bind(args, kwargs)
                return self._dump_result(await fun(*bound.args, **bound.kwargs))

            return run_async

        @functools.wraps(fun)
        def run(*args: Any, **kwargs: Any) -> Any:
            bound = self._bind(args, kwargs)
            return self._dump_result(fun(*bound.args, **bound.kwargs))

        return run

    def _bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> inspect.BoundArguments:
        bound = self.signature.bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            model = self._model_for(self._annotation(name), value)
            if model is not None:
                bound.arguments[name] = self._validate(model, value)
        return bound

    def _dump_result(self, value: Any) -> Any:
        annotation = self._annotation("return")
        annotation = _unwrap_optional(annotation) or annotation
        if (
            isinstance(annotation, type)
            and isinstance(value, self.base_model)
            and isinstance(value, annotation)
        ):
            model: Any = value
            return model.model_dump(**self.dump_kwargs)
        return value

    def dump_arguments(
        self, args: list[Any], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """The caller's model arguments as dumps, where the task rebuilds an equal model."""
        params = list(self.signature.parameters.values())[self.bound_offset :]
        positional = [
            p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        keywords = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        new_args = [
            self._dump_one(positional[i] if i < len(positional) else None, value)
            for i, value in enumerate(args)
        ]
        new_kwargs = {
            key: self._dump_one(key if key in keywords else None, value)
            for key, value in kwargs.items()
        }
        return new_args, new_kwargs

    def _dump_one(self, name: str | None, value: Any) -> Any:
        if name is None or not isinstance(value, self.base_model):
            return value
        model = self._model_for(self._annotation(name), value)
        if model is None:
            return value
        instance: Any = value
        try:
            dumped = instance.model_dump(**self.dump_kwargs)
            if self._validate(model, dumped) == value:
                return dumped
        except Exception:  # isolation boundary: a model that only a worker can dump
            return value
        return value
