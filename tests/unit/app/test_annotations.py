"""`task_annotations`: task attributes changed from the settings, as Celery does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from celeriac import Celeriac
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.task import Task


def make_app(**settings: Any) -> Celeriac:
    return Celeriac("t", broker="memory://", set_as_current=False, **settings)


def test_a_dict_annotation_sets_the_named_tasks_attributes() -> None:
    app = make_app(task_annotations={"t.add": {"rate_limit": "10/s", "max_retries": 7}})

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def other() -> None: ...

    assert add.rate_limit == "10/s"
    assert add.max_retries == 7
    assert other.rate_limit is None


def test_a_star_annotation_applies_to_every_task_and_wins_over_the_name() -> None:
    # Celery compat: the name's annotation is applied first, then "*".
    app = make_app(task_annotations={"*": {"acks_late": False}, "t.add": {"acks_late": True}})

    @app.task(name="t.add")
    def add() -> None: ...

    assert add.acks_late is False


def test_an_annotator_object_is_asked_per_task() -> None:
    class SlowTasks:
        def annotate(self, task: Task[Any, Any]) -> dict[str, Any] | None:
            if task.name.endswith("slow"):
                return {"time_limit": 60.0}
            return None

    app = make_app(task_annotations=[SlowTasks()])

    @app.task
    def slow() -> None: ...

    @app.task
    def fast() -> None: ...

    assert slow.time_limit == 60.0
    assert fast.time_limit is None


def test_annotations_set_after_the_tasks_apply_when_the_app_is_finalized() -> None:
    app = make_app()

    @app.task(name="t.add")
    def add() -> None: ...

    app.conf.task_annotations = {"t.add": {"priority": 5}}
    app.finalize()
    assert add.priority == 5


def test_celerys_around_method_form_is_refused() -> None:
    app = make_app(task_annotations={"t.add": {"@on_failure": print}})
    with pytest.raises(ImproperlyConfigured, match="'@on_failure'"):

        @app.task(name="t.add")
        def add() -> None: ...


def test_a_bad_rate_limit_in_an_annotation_is_refused() -> None:
    # "*" applies to the built-in tasks too (as in Celery), so the app refuses at once.
    with pytest.raises(ImproperlyConfigured, match="rate limit 'fast' is not a rate"):
        make_app(task_annotations={"*": {"rate_limit": "fast"}})
