"""Completion counters that a task body updates and the runner reads, cheaply.

Each worker process that runs a measured task (S1's no-op, S4's sleeper) maps one small
file in `BENCH_STATS_DIR` (named after its pid) and keeps three numbers in it: when its
first task started, when its latest task finished, and how many finished. A task pays
two `time.time()` calls, an uncontended lock and a `struct.pack_into` into shared memory
(about a microsecond); it never touches the broker, the backend or the disk's write path.
The runner reads the same pages through its own mapping (`read_all`), so it sees the
counts live and knows the moment the last task finished, whatever the library or pool.

Standard library only: this module runs inside every contestant's environment.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["LAYOUT", "SIZE", "Counters", "read_all", "task_finished", "task_started"]

# first task start (s since epoch), last task end (s since epoch), tasks finished.
LAYOUT = struct.Struct("<ddq")
SIZE = LAYOUT.size
_END_AND_COUNT = struct.Struct("<dq")

_lock = threading.Lock()
_map: mmap.mmap | None = None
_pid = 0
_started = False
_finished = 0


def _mapping() -> mmap.mmap | None:
    """This process's counters (a new file after a fork: the pid is in its name)."""
    global _map, _pid, _started, _finished
    pid = os.getpid()
    if _pid != pid:
        directory = os.environ.get("BENCH_STATS_DIR")
        _pid, _started, _finished = pid, False, 0
        if not directory:
            _map = None
            return None
        path = Path(directory) / f"{pid}.stats"
        with open(path, "w+b") as handle:
            handle.write(b"\0" * SIZE)
            handle.flush()
            _map = mmap.mmap(handle.fileno(), SIZE)
    return _map


def task_started() -> None:
    """Call first thing in a measured task body."""
    global _started
    if _started and _pid == os.getpid():
        return
    now = time.time()
    with _lock:
        counters = _mapping()
        if counters is not None and not _started:
            _started = True
            struct.pack_into("<d", counters, 0, now)


def task_finished() -> None:
    """Call last thing in a measured task body."""
    global _finished
    now = time.time()
    with _lock:
        counters = _mapping()
        if counters is not None:
            _finished += 1
            # The end time is written before the count, so a reader that sees the final
            # count also sees the final end time.
            _END_AND_COUNT.pack_into(counters, 8, now, _finished)


class Counters:
    """The runner's view of every counter file in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._maps: dict[str, mmap.mmap] = {}

    def read(self) -> tuple[int, float | None, float | None]:
        """Tasks finished in all processes, the earliest start and the latest end."""
        for path in self.directory.glob("*.stats"):
            if path.name not in self._maps and path.stat().st_size >= SIZE:
                with open(path, "rb") as handle:
                    self._maps[path.name] = mmap.mmap(
                        handle.fileno(), SIZE, access=mmap.ACCESS_READ
                    )
        return read_all(self._maps.values())

    def close(self) -> None:
        for counters in self._maps.values():
            counters.close()
        self._maps.clear()


def read_all(maps: Iterable[mmap.mmap]) -> tuple[int, float | None, float | None]:
    """Sum counters: (tasks finished, earliest start, latest end)."""
    total = 0
    first: float | None = None
    last: float | None = None
    for counters in maps:
        start, end, count = LAYOUT.unpack_from(counters, 0)
        if start and (first is None or start < first):
            first = start
        if count:
            total += count
            if last is None or end > last:
                last = end
    return total, first, last
