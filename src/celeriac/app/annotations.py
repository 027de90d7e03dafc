"""`task_annotations`: change task attributes from the settings, as Celery does.

```python
app.conf.task_annotations = {"tasks.add": {"rate_limit": "10/s"}}
app.conf.task_annotations = {"*": {"acks_late": False}}          # every task
app.conf.task_annotations = [MyAnnotator(), {"tasks.add": {...}}]  # tried in order
```

An entry is a dict keyed by task name (or `"*"` for every task) whose values are dicts
of task attributes, an object with an `annotate(task)` method returning such a dict (or
None), or the dotted path of either. Annotations are applied when a task is created and
again when the app is finalized (so settings loaded after the tasks were defined count).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from celeriac._imports import import_object
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.task import Task

__all__ = ["annotate", "parse_annotations"]

# An annotator answers for one task (`annotate`) and for every task (`annotate_any`).
Annotator = tuple[
    Callable[["Task[Any, Any]"], "Mapping[str, Any] | None"],
    Callable[[], "Mapping[str, Any] | None"],
]


def _from_mapping(table: Mapping[str, Any]) -> Annotator:
    for name, attributes in table.items():
        if not isinstance(attributes, Mapping):
            raise ImproperlyConfigured(
                f"task_annotations[{name!r}]={attributes!r} is not usable: write a dict of "
                "task attributes, e.g. {'rate_limit': '10/s'}"
            )
    return (lambda task: table.get(task.name)), (lambda: table.get("*"))


def _one(entry: Any) -> Annotator:
    if isinstance(entry, str):
        try:
            entry = import_object(entry)
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"task_annotations names {entry!r}, which cannot be imported: {exc}"
            ) from exc
        if isinstance(entry, type):
            entry = entry()
    if isinstance(entry, Mapping):
        return _from_mapping(entry)
    method = getattr(entry, "annotate", None)
    if callable(method):
        any_method = getattr(entry, "annotate_any", None)
        return method, (any_method if callable(any_method) else (lambda: None))
    raise ImproperlyConfigured(
        f"task_annotations entry {entry!r} is not usable: write a dict keyed by task "
        "name, or an object with an annotate(task) method"
    )


def parse_annotations(value: Any) -> list[Annotator]:
    """The annotators of `task_annotations`, in order.

    Raises:
        ImproperlyConfigured: an entry that is neither a dict nor an annotator.
    """
    if value is None:
        return []
    entries = value if isinstance(value, list | tuple) else [value]
    return [_one(entry) for entry in entries]


def annotate(task: Task[Any, Any], value: Any) -> None:
    """Apply `task_annotations` (`value`) to `task`.

    Celery compat: the first annotator that answers for the task's name is applied,
    then the first that answers for `"*"` (so `"*"` wins where both set an attribute).
    """
    annotators = parse_annotations(value)
    chosen = [
        next((found for one, _ in annotators if (found := one(task))), None),
        next((found for _, every in annotators if (found := every())), None),
    ]
    for attributes in chosen:
        for key, attribute in (attributes or {}).items():
            if key.startswith("@"):
                raise ImproperlyConfigured(
                    f"task_annotations key {key!r} (Celery's around-method form) is not "
                    "supported: subclass Task and pass base= instead"
                )
            if key == "rate_limit" and attribute is not None:
                from celeriac.app.ratelimit import parse_rate

                parse_rate(attribute)
            setattr(task, key, attribute)
