"""The checker itself: what it counts, and a record caught while it is being appended."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.chaos.ledger import Ledger, append_line

if TYPE_CHECKING:
    from pathlib import Path


def test_the_checker_counts_lost_duplicate_phantom_and_early(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    for task_id in ("a", "b", "c"):
        ledger.published(task_id, eta=100.0 if task_id == "c" else None)
    for task_id in ("a", "a", "x"):
        append_line(ledger.events_path, {"event": "finish", "id": task_id})
    append_line(ledger.events_path, {"event": "start", "id": "c", "time": 99.0, "eta": 100.0})

    report = ledger.check()

    assert (report.published, report.finished) == (3, 2)
    assert report.lost == ["b", "c"]
    assert report.duplicates == {"a": 2}
    assert report.phantoms == ["x"]
    assert report.early == ["c"]


def test_a_record_still_being_written_is_read_once_it_is_whole(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.published("a")
    with ledger.events_path.open("ab") as events:
        events.write(b'{"event": "fin')  # a reader can see half of another process's write
        events.flush()
        assert ledger.check().lost == ["a"]
        events.write(b'ish", "id": "a"}\n')
    assert ledger.check().lost == []
