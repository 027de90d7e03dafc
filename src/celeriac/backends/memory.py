"""In-process result backend (`memory://`): tests, eager mode, a worker in a thread.

Backends with the same URL in one process share one store. Values are kept encoded,
exactly as a networked backend would keep them, so tests see the same round trip.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from celeriac import states
from celeriac.backends.base import (
    REVOCATION_TTL,
    ChordPart,
    ResultBackend,
    ResultMeta,
    Revocation,
    check_limit,
    newest_first,
)
from celeriac.exceptions import ResultTimeout

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["MemoryBackend"]


@dataclass
class _Store:
    lock: threading.Condition = field(default_factory=threading.Condition)
    # key → (encoded value, expires at or None)
    values: dict[str, tuple[bytes, float | None]] = field(default_factory=dict)
    chord_sizes: dict[str, int] = field(default_factory=dict)
    chord_parts: dict[str, dict[str, ChordPart]] = field(default_factory=dict)
    crashes: dict[str, int] = field(default_factory=dict)
    revoked: list[Revocation] = field(default_factory=list)


_stores: dict[str, _Store] = {}
_stores_lock = threading.Lock()


def _store_for(url: str) -> _Store:
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = _Store()
        return store


class MemoryBackend(ResultBackend):
    """A complete result backend in this process's memory."""

    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    supports_crash_ledger: ClassVar[bool] = True
    supports_revocation: ClassVar[bool] = True
    supports_recent: ClassVar[bool] = True

    def __init__(self, url: str = "memory://", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._store = _store_for(url)

    @classmethod
    def reset(cls, url: str = "memory://") -> None:
        """Forget everything stored under `url` (tests)."""
        with _stores_lock:
            _stores.pop(url, None)

    def _get_raw(self, key: str) -> bytes | None:
        item = self._store.values.get(key)
        if item is None:
            return None
        value, expires_at = item
        if expires_at is not None and expires_at <= self.clock.time():
            del self._store.values[key]
            return None
        return value

    def _set_raw(self, key: str, value: bytes) -> None:
        expires_at = self.clock.time() + self.expires if self.expires else None
        self._store.values[key] = (value, expires_at)

    def store(self, meta: ResultMeta) -> None:
        key = f"task:{meta.task_id}"
        with self._store.lock:
            current = self._get_raw(key)
            if current is not None and self.decode_meta(current).status == states.SUCCESS:
                return
            self._set_raw(key, self.encode_meta(meta))
            self._store.lock.notify_all()

    def get(self, task_id: str) -> ResultMeta | None:
        with self._store.lock:
            raw = self._get_raw(f"task:{task_id}")
        return None if raw is None else self.decode_meta(raw, task_id=task_id)

    def recent(self, limit: int) -> list[ResultMeta]:
        """The newest `limit` results by `date_done`, of every live one stored."""
        check_limit(limit)
        with self._store.lock:
            raws = [
                (key[len("task:") :], raw)
                for key in list(self._store.values)
                if key.startswith("task:") and (raw := self._get_raw(key)) is not None
            ]
        # Newest stored first, so that records without a date keep that order.
        metas = [self.decode_meta(raw, task_id=task_id) for task_id, raw in reversed(raws)]
        return newest_first(metas, limit)

    def forget(self, task_id: str) -> None:
        with self._store.lock:
            self._store.values.pop(f"task:{task_id}", None)

    def wait(self, task_id: str, *, timeout: float | None = None) -> ResultMeta:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._store.lock:
            while True:
                raw = self._get_raw(f"task:{task_id}")
                if raw is not None:
                    meta = self.decode_meta(raw, task_id=task_id)
                    if meta.is_ready:
                        return meta
                if deadline is None:
                    self._store.lock.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ResultTimeout(f"task {task_id} not ready after {timeout} s")
                self._store.lock.wait(remaining)

    def revoke(self, task_ids: Sequence[str], *, terminate: bool = False) -> None:
        now = self.clock.time()
        with self._store.lock:
            log = [r for r in self._store.revoked if r.at > now - REVOCATION_TTL]
            log.extend(Revocation(task_id, terminate, now) for task_id in task_ids)
            self._store.revoked = log

    def revoked_since(self, cursor: float) -> tuple[list[Revocation], float]:
        with self._store.lock:
            found = [r for r in self._store.revoked if r.at >= cursor]
        return found, max([cursor, *(r.at for r in found)])

    def note_crash(self, task_id: str) -> int:
        with self._store.lock:
            count = self._store.crashes.get(task_id, 0) + 1
            self._store.crashes[task_id] = count
            return count

    def crash_count(self, task_id: str) -> int:
        with self._store.lock:
            return self._store.crashes.get(task_id, 0)

    def save_group(self, group_id: str, result: Any) -> None:
        with self._store.lock:
            self._set_raw(f"group:{group_id}", self.encode({"result": result}))

    def get_group(self, group_id: str) -> Any | None:
        with self._store.lock:
            raw = self._get_raw(f"group:{group_id}")
        if raw is None:
            return None
        value = self.decode(raw)
        return value.get("result") if isinstance(value, dict) else None

    def delete_group(self, group_id: str) -> None:
        with self._store.lock:
            self._store.values.pop(f"group:{group_id}", None)

    def set_chord_size(self, group_id: str, size: int) -> None:
        with self._store.lock:
            self._store.chord_sizes[group_id] = size

    def chord_part_return(
        self,
        group_id: str,
        *,
        index: int | None,
        task_id: str,
        status: str,
        result: Any,
    ) -> list[ChordPart] | None:
        store = self._store
        with store.lock:
            parts = store.chord_parts.setdefault(group_id, {})
            # Keyed by task id: a redelivered header task is not counted twice.
            parts[task_id] = ChordPart(
                float("inf") if index is None else index, task_id, status, result
            )
            size = store.chord_sizes.get(group_id)
            if size is None or len(parts) < size:
                return None
            del store.chord_parts[group_id]
            del store.chord_sizes[group_id]
            return sorted(parts.values(), key=lambda part: part.index)

    def get_many(self, task_ids: Sequence[str]) -> dict[str, ResultMeta]:
        with self._store.lock:
            raws = {tid: self._get_raw(f"task:{tid}") for tid in task_ids}
        return {
            tid: self.decode_meta(raw, task_id=tid) for tid, raw in raws.items() if raw is not None
        }
