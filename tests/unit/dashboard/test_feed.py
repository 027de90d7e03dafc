"""The events feed's folding and the charts' ring buffer."""

from __future__ import annotations

from celeriac.dashboard.charts import Series
from celeriac.dashboard.feed import MAX_TASKS, EventFeed
from celeriac.dashboard.sources import _child_ids


def test_task_events_build_the_timeline_and_state(app):
    feed = EventFeed(app)
    feed.fold({"type": "task-sent", "uuid": "u", "name": "t", "queue": "q", "timestamp": 10.0})
    feed.fold({"type": "task-started", "uuid": "u", "hostname": "w@h", "timestamp": 11.0})
    feed.fold({"type": "task-failed", "uuid": "u", "exception": "E()", "timestamp": 12.5})
    task = feed.task("u")
    assert task is not None
    assert task.state == "FAILURE"
    assert [kind for kind, _, _ in task.timeline] == ["task-sent", "task-started", "task-failed"]
    assert task.queue == "q"
    assert feed.queues_seen() == ["q"]
    assert feed.latest == 12.5


def test_the_task_cache_is_bounded(app):
    feed = EventFeed(app)
    for i in range(MAX_TASKS + 10):
        feed.fold({"type": "task-received", "uuid": f"u{i}", "timestamp": 1.0})
    assert feed.task("u0") is None
    assert feed.task(f"u{MAX_TASKS + 9}") is not None


def test_series_keeps_only_the_window():
    series = Series(bucket=10, window=60)
    series.add_finished(1000.0, failed=False, runtime=2.0)
    series.add_finished(1005.0, failed=True, runtime=4.0)
    window = series.window(1055.0)
    assert len(window) == 6
    assert window[0].start == 1000
    assert window[0].finished == 2
    assert window[0].runtime_mean == 3.0
    assert series.window(1065.0)[0].start == 1010
    assert sum(b.finished for b in series.window(1065.0)) == 0


def test_stored_children_give_the_ids_of_results_and_group_members():
    children = [[["a", None], None], [["g", None], [[["b", None], None], [["c", None], None]]]]
    assert _child_ids(children) == [("a", None), ("b", "g"), ("c", "g")]


def test_a_late_task_sent_event_does_not_undo_a_finished_state(app):
    feed = EventFeed(app)
    feed.fold({"type": "task-succeeded", "uuid": "u", "timestamp": 5.0})
    feed.fold({"type": "task-sent", "uuid": "u", "name": "t", "timestamp": 6.0})
    feed.fold({"type": "task-started", "uuid": "u", "timestamp": 4.0})
    task = feed.task("u")
    assert task is not None
    assert task.state == "SUCCESS"
    assert task.name == "t"
    assert task.updated == 6.0
