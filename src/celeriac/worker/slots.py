"""A table in shared memory where each prefork child says what it is running.

The supervisor reads it to enforce hard time limits (kill a child past its deadline) and,
when a child dies, to know which message was running (it counts toward that message's
redelivery cap; prefetched ones do not), and, for the autoscaler, how many messages each
child holds. One fixed-size record per child; a sequence
number makes reads consistent without locks (a writer bumps it to odd before writing and
to even after).

Beside it, each child posts what it holds (running and prefetched, as remote control's
`Request.info()` dicts, JSON) into a region of its own, a few times a second when that
changed, so the supervisor answers `inspect reserved` and `active` without asking it.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import final

__all__ = ["HELD_SIZE", "RunningTask", "SlotTable"]

# seq, started, deadline (or 0), tag, task id, task name; times are time.monotonic()
_FORMAT = "<Qdd128s256s256s"
_SIZE = struct.calcsize(_FORMAT)
# A child's posted holdings: seq, length, then that many bytes of JSON.
_HELD_HEADER = "<QI"
_HELD_HEADER_SIZE = struct.calcsize(_HELD_HEADER)
HELD_SIZE = 64 * 1024


@final
@dataclass(frozen=True, slots=True)
class RunningTask:
    """What one child is running right now."""

    tag: str
    task_id: str
    name: str
    started: float
    deadline: float | None


def _encode(text: str, size: int) -> bytes:
    return text.encode("utf-8")[:size]


def _decode(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace")


class SlotTable:
    """`size` slots in an anonymous shared mapping, made before forking."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._map = mmap.mmap(-1, max(1, size) * _SIZE)
        # Tasks each slot has finished (written by its child only; summed for stats).
        self._done = mmap.mmap(-1, max(1, size) * 8)
        # Messages each slot's child holds now, running or prefetched (the autoscaler's load).
        self._held = mmap.mmap(-1, max(1, size) * 4)
        # What each child holds, as it last posted it (pages are touched only when used).
        self._posted = mmap.mmap(-1, max(1, size) * HELD_SIZE)

    def _offset(self, index: int) -> int:
        if not 0 <= index < self.size:
            raise IndexError(f"slot {index} out of range 0..{self.size - 1}")
        return index * _SIZE

    def _seq(self, index: int) -> int:
        value: int = struct.unpack_from("<Q", self._map, self._offset(index))[0]
        return value

    def start(
        self,
        index: int,
        *,
        tag: str,
        task_id: str,
        name: str,
        started: float,
        deadline: float | None,
    ) -> None:
        """Record that slot `index` started a task (called by the child)."""
        offset = self._offset(index)
        seq = self._seq(index)
        struct.pack_into("<Q", self._map, offset, seq + 1 if seq % 2 == 0 else seq)
        struct.pack_into(
            _FORMAT,
            self._map,
            offset,
            seq + 1 if seq % 2 == 0 else seq,
            started,
            deadline or 0.0,
            _encode(tag, 128),
            _encode(task_id, 256),
            _encode(name, 256),
        )
        struct.pack_into("<Q", self._map, offset, (seq | 1) + 1)

    def clear(self, index: int) -> None:
        """Record that slot `index` runs nothing (called by the child, and after a
        replacement by the supervisor)."""
        offset = self._offset(index)
        seq = self._seq(index)
        odd = seq + 1 if seq % 2 == 0 else seq
        struct.pack_into(_FORMAT, self._map, offset, odd, 0.0, 0.0, b"", b"", b"")
        struct.pack_into("<Q", self._map, offset, odd + 1)

    def read(self, index: int) -> RunningTask | None:
        """What slot `index` runs, or None."""
        offset = self._offset(index)
        for _ in range(100):
            seq, started, deadline, tag, task_id, name = struct.unpack_from(
                _FORMAT, self._map, offset
            )
            if seq % 2 == 1 or self._seq(index) != seq:
                continue
            if not started:
                return None
            return RunningTask(
                tag=_decode(tag),
                task_id=_decode(task_id),
                name=_decode(name),
                started=started,
                deadline=deadline or None,
            )
        return None

    def count_done(self, index: int) -> None:
        """Count one finished task for slot `index` (called by its child)."""
        offset = index * 8
        struct.pack_into(
            "<Q", self._done, offset, struct.unpack_from("<Q", self._done, offset)[0] + 1
        )

    def set_held(self, index: int, count: int) -> None:
        """Record how many messages slot `index` holds (its child, and the supervisor
        when it replaces the child)."""
        self._offset(index)
        struct.pack_into("<I", self._held, index * 4, max(0, count))

    def held(self, index: int) -> int:
        """Messages slot `index` holds, running or prefetched (a single aligned word:
        no torn reads)."""
        self._offset(index)
        value: int = struct.unpack_from("<I", self._held, index * 4)[0]
        return value

    def done(self) -> int:
        """Tasks finished by every child so far."""
        return sum(struct.unpack_from(f"<{self.size}Q", self._done, 0)) if self.size else 0

    def post_held(self, index: int, payload: bytes) -> bool:
        """Post what slot `index`'s child holds (called by that child only); False if
        `payload` does not fit (nothing is posted)."""
        self._offset(index)
        if len(payload) > HELD_SIZE - _HELD_HEADER_SIZE:
            return False
        offset = index * HELD_SIZE
        seq = struct.unpack_from("<Q", self._posted, offset)[0]
        odd = seq + 1 if seq % 2 == 0 else seq
        struct.pack_into(_HELD_HEADER, self._posted, offset, odd, len(payload))
        start = offset + _HELD_HEADER_SIZE
        self._posted[start : start + len(payload)] = payload
        struct.pack_into("<Q", self._posted, offset, odd + 1)
        return True

    def read_held(self, index: int) -> bytes:
        """What slot `index`'s child last posted (empty if nothing, or if it is being
        written over and over)."""
        self._offset(index)
        offset = index * HELD_SIZE
        for _ in range(100):
            seq, length = struct.unpack_from(_HELD_HEADER, self._posted, offset)
            if seq % 2 == 1:
                continue
            start = offset + _HELD_HEADER_SIZE
            payload = self._posted[start : start + min(length, HELD_SIZE - _HELD_HEADER_SIZE)]
            if struct.unpack_from("<Q", self._posted, offset)[0] == seq:
                return payload
        return b""

    def close(self) -> None:
        self._map.close()
        self._done.close()
        self._held.close()
        self._posted.close()
