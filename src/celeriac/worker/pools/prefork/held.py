"""What prefork children hold, posted for their supervisor (`inspect active`/`reserved`).

A child's keeper thread posts what its consumer holds (running, and prefetched but not
started) into its region of the shared slot table every `POST_INTERVAL` when that
changed, as Celery's `Request.info()` dicts. The supervisor answers from there without
asking the child: `active` is what the slot table says runs now (exact), with the posted
arguments and delivery info of that task when the child posted them; `reserved` is the
posted prefetched messages, less any that started since.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

from celeriac.worker.control import request_info, running_info
from celeriac.worker.slots import HELD_SIZE

if TYPE_CHECKING:
    from collections.abc import Mapping

    from celeriac.worker.holdings import Holdings
    from celeriac.worker.slots import SlotTable

__all__ = ["POST_INTERVAL", "HeldPoster", "children_requests"]

logger = logging.getLogger("celeriac.worker")

# How often a child looks whether what it holds changed (its keeper thread's tick).
POST_INTERVAL = 0.2


class HeldPoster:
    """A prefork child's side: posts what `holdings` holds into slot `index`."""

    def __init__(self, holdings: Holdings, slots: SlotTable, index: int, hostname: str) -> None:
        self.holdings = holdings
        self.slots = slots
        self.index = index
        self.hostname = hostname
        self._posted: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    def post(self) -> None:
        """Post what is held now, if that changed since the last post."""
        running, waiting = self.holdings.snapshot()
        tags = (tuple(d.tag for d in running), tuple(d.tag for d in waiting))
        if tags == self._posted:
            return
        pid = os.getpid()
        active = [request_info(d, self.hostname, pid) for d in running]
        reserved = [request_info(d, self.hostname, None) for d in waiting]
        payload = _encode(active, reserved)
        while len(payload) > HELD_SIZE // 2 and reserved:
            # A huge prefetch window: post the first messages, as many as fit.
            reserved = reserved[: len(reserved) // 2]
            payload = _encode(active, reserved)
        if self.slots.post_held(self.index, payload):
            self._posted = tags


def _encode(active: list[dict[str, Any]], reserved: list[dict[str, Any]]) -> bytes:
    return json.dumps({"active": active, "reserved": reserved}, default=repr).encode()


def _posted(slots: SlotTable, index: int) -> dict[str, list[dict[str, Any]]]:
    raw = slots.read_held(index)
    if not raw:
        return {}
    try:
        posted: dict[str, list[dict[str, Any]]] = json.loads(raw)
    except ValueError:
        logger.debug("Slot %d posted holdings that do not decode", index)
        return {}
    return posted


def children_requests(
    slots: SlotTable, children: Mapping[int, int], hostname: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(active, reserved) of the live `children` (slot index to pid)."""
    active: list[dict[str, Any]] = []
    reserved: list[dict[str, Any]] = []
    for index, pid in children.items():
        running = slots.read(index)
        posted = _posted(slots, index)
        if running is not None:
            info = running_info(running, hostname, pid)
            for held in posted.get("active", ()):
                if held.get("id") == running.task_id:
                    info = {**held, "time_start": info["time_start"], "worker_pid": pid}
            active.append(info)
        started = running.task_id if running is not None else None
        reserved.extend(r for r in posted.get("reserved", ()) if r.get("id") != started)
    return active, reserved
