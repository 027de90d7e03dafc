"""The worker side of remote control (Celery's pidbox commands) and of worker events.

- `server.py`: `ControlServer`, the thread that answers commands addressed to the node;
- `commands.py`: the commands and their replies, by Celery's names;
- `changes.py`: changes made by commands, applied in the processes that run tasks;
- `remote.py`: `start_remote`, which the worker calls at start-up.
"""

from __future__ import annotations

from celeriac.worker.control.changes import CONTROL_PIPE_INTERVAL, ControlPipe, apply_control
from celeriac.worker.control.commands import COMMANDS, request_info, running_info
from celeriac.worker.control.remote import (
    Remote,
    event_mailbox,
    heartbeat_freq,
    sends_heartbeats,
    start_remote,
    task_event_dispatcher,
)
from celeriac.worker.control.server import ControlServer, LamportClock, WorkerState

__all__ = [
    "COMMANDS",
    "CONTROL_PIPE_INTERVAL",
    "ControlPipe",
    "ControlServer",
    "LamportClock",
    "Remote",
    "WorkerState",
    "apply_control",
    "event_mailbox",
    "heartbeat_freq",
    "request_info",
    "running_info",
    "sends_heartbeats",
    "start_remote",
    "task_event_dispatcher",
]
