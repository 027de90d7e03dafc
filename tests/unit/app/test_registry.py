"""The task registry: names to tasks, NotRegistered on a miss."""

from __future__ import annotations

from typing import Any, cast

import pytest

from celeriac.app.registry import TaskRegistry
from celeriac.exceptions import CeleriacError, NotRegistered


class FakeTask:
    """Enough of a Task for the registry, which only reads `name`."""

    def __init__(self, name: str) -> None:
        self.name = name


def registry_with(*names: str) -> TaskRegistry:
    registry = TaskRegistry()
    for name in names:
        registry.register(cast("Any", FakeTask(name)))
    return registry


def test_registered_task_is_found_by_name() -> None:
    registry = TaskRegistry()
    task: Any = FakeTask("proj.add")
    registry.register(task)
    assert registry["proj.add"] is task
    assert registry.get("proj.add") is task
    assert "proj.add" in registry


def test_missing_task_raises_not_registered_naming_it() -> None:
    with pytest.raises(NotRegistered) as raised:
        _ = TaskRegistry()["proj.nope"]
    assert str(raised.value) == "proj.nope"
    assert isinstance(raised.value, KeyError)
    assert isinstance(raised.value, CeleriacError)


def test_get_of_a_missing_task_is_none() -> None:
    assert TaskRegistry().get("proj.nope") is None
    assert "proj.nope" not in TaskRegistry()


def test_registering_a_name_again_replaces_the_task() -> None:
    registry = registry_with("proj.add")
    newer: Any = FakeTask("proj.add")
    registry.register(newer)
    assert registry["proj.add"] is newer
    assert len(registry) == 1


def test_unregister_removes_the_task() -> None:
    registry = registry_with("proj.add")
    registry.unregister("proj.add")
    assert "proj.add" not in registry
    with pytest.raises(NotRegistered, match=r"proj.add"):
        registry.unregister("proj.add")


def test_iteration_and_length_cover_every_task() -> None:
    registry = registry_with("b.task", "a.task", "celery.chord")
    assert sorted(registry) == ["a.task", "b.task", "celery.chord"]
    assert len(registry) == 3


def test_user_tasks_leave_out_celery_builtins_sorted() -> None:
    registry = registry_with("proj.z", "celery.chain", "celery.backend_cleanup", "proj.a")
    assert registry.user_tasks() == ["proj.a", "proj.z"]
