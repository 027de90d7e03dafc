"""Remote control changes reaching a prefork child through its pipe."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from celeriac.worker.control.changes import ControlPipe
from celeriac.worker.revocations import Revocations

if TYPE_CHECKING:
    from celeriac import Celeriac


def test_a_revoke_and_a_queue_change_are_applied_when_the_child_reads(app: Celeriac) -> None:
    read_end, write_end = os.pipe()
    executor = SimpleNamespace(revocations=Revocations(app.backend), set_rate_limit=None)
    consumer: Any = SimpleNamespace(executor=executor, queues=["celery"])
    pipe = ControlPipe(read_end, app, consumer, None)
    try:
        for change in (
            {"method": "revoke", "arguments": {"task_ids": ["t-1"], "terminate": False}},
            {"method": "add_consumer", "arguments": {"queue": "extra"}},
        ):
            line = json.dumps(change).encode() + b"\n"
            # Split across two writes: a line is applied only once it is whole.
            os.write(write_end, line[:10])
            pipe.read()
            os.write(write_end, line[10:])
        pipe.read()
    finally:
        os.close(read_end)
        os.close(write_end)
    assert "t-1" in executor.revocations
    assert consumer.queues == ["celery", "extra"]
