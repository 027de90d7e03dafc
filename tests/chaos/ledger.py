"""Ground truth for the reliability suite, kept outside the system under test.

The producer appends every id whose publish returned to `published.log`; the chaos task
appends a `start` and a `finish` record (id, attempt, pid, time, eta) to `events.log`
before it returns. Both are plain append-only files written with one `write` per line
(O_APPEND), so records from many processes never interleave. `check` compares them.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Ledger", "Report", "append_line"]

# A start this much before its ETA counts as early (clock reads in different processes).
EARLY_TOLERANCE = 0.005


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single write (atomic between processes)."""
    data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _read(path: Path) -> list[dict[str, Any]]:
    """Every whole record in `path`. A reader can see a write that is still being copied
    in (O_APPEND makes writers atomic towards each other, not towards readers), so a last
    line without its newline is a record in progress and is read next time."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    whole = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in whole.splitlines() if line.strip()]


@dataclass
class Report:
    """What the checker found."""

    published: int
    finished: int
    lost: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    phantoms: list[str] = field(default_factory=list)
    early: list[str] = field(default_factory=list)

    @property
    def duplicate_runs(self) -> int:
        """Extra finishes beyond the first, summed over every id."""
        return sum(count - 1 for count in self.duplicates.values())

    def summary(self) -> str:
        return (
            f"published={self.published} finished={self.finished} lost={len(self.lost)} "
            f"duplicate_runs={self.duplicate_runs} phantoms={len(self.phantoms)} "
            f"early={len(self.early)}"
            + (f" first lost={self.lost[:5]}" if self.lost else "")
            + (f" first early={self.early[:5]}" if self.early else "")
        )


class Ledger:
    """The two append-only files of one chaos run, in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.published_path = directory / "published.log"
        self.events_path = directory / "events.log"

    def published(self, task_id: str, eta: float | None = None) -> None:
        """Record that the publish of `task_id` returned (call it after `delay`)."""
        append_line(self.published_path, {"id": task_id, "eta": eta})

    def events(self) -> list[dict[str, Any]]:
        return _read(self.events_path)

    def published_ids(self) -> list[str]:
        return [record["id"] for record in _read(self.published_path)]

    def finished_ids(self) -> set[str]:
        return {e["id"] for e in self.events() if e["event"] == "finish"}

    def check(self) -> Report:
        published = _read(self.published_path)
        events = self.events()
        published_ids = {record["id"] for record in published}
        finishes = Counter(e["id"] for e in events if e["event"] == "finish")
        starts = [e for e in events if e["event"] == "start"]
        return Report(
            published=len(published_ids),
            finished=len(finishes),
            lost=sorted(published_ids - set(finishes)),
            duplicates={i: n for i, n in finishes.items() if n > 1},
            phantoms=sorted(set(finishes) - published_ids),
            early=sorted(
                {
                    e["id"]
                    for e in starts
                    if e.get("eta") is not None and e["time"] < e["eta"] - EARLY_TOLERANCE
                }
            ),
        )
