"""`ControlServer`: Celery's pidbox commands, answered on a thread of the worker.

`ControlServer` listens on the broker's broadcast channel as node `name@host`, runs each
command addressed to it (`destination`, or `pattern` + `matcher`) and, when the sender
asked for a reply, answers `{node: value}` with the command's ticket, exactly as kombu's
`Node.dispatch` does: a failing or unknown command answers `{"error": repr}`. It runs in
the process that knows every task of the worker: the prefork supervisor (it reads what
each child runs from the slot table, so asking never stops work) or the process of the
solo, threads and asyncio pools. What a command needs from the pool is the small
`WorkerState` protocol.

The commands and their replies follow `celery/worker/control.py` (spec §5.4); the ones
that change the worker (`rate_limit`, `time_limit`, `enable_events`, `add_consumer`, ...)
are applied here and handed to the pool, which passes them on to prefork children.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from celeriac.brokers.mailbox import pack, unpack
from celeriac.exceptions import BrokerError, CeleriacError
from celeriac.protocol.serializers import normalize_accept
from celeriac.worker.control.commands import COMMANDS, NoReply

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.brokers.mailbox import Mailbox
    from celeriac.protocol.message import Message
    from celeriac.worker.events import EventDispatcher
    from celeriac.worker.options import WorkerOptions
    from celeriac.worker.pools.prefork.autoscale import PoolSize

logger = logging.getLogger("celeriac.worker")

__all__ = ["ControlServer", "LamportClock", "WorkerState"]

# How long one wait for commands blocks: bounds how fast `stop` is noticed.
LISTEN_TIMEOUT = 0.5
# Pause before listening again after the broker went away.
RECONNECT_PAUSE = 1.0


class LamportClock:
    """Celery's logical clock: forwarded on every send, adjusted on every receive."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def forward(self) -> int:
        with self._lock:
            self.value += 1
            return self.value

    def adjust(self, other: object) -> None:
        if isinstance(other, int) and not isinstance(other, bool):
            with self._lock:
                self.value = max(self.value, other) + 1


class WorkerState(Protocol):
    """What remote control asks of a pool."""

    def active_requests(self) -> list[dict[str, Any]]:
        """`Request.info()` of every task running now."""

    def reserved_requests(self) -> list[dict[str, Any]]:
        """`Request.info()` of every task prefetched and not started."""

    def processed(self) -> dict[str, int]:
        """Tasks handled so far, by name."""

    def processes(self) -> list[int]:
        """Pids of the processes that run tasks."""

    def request_shutdown(self) -> None:
        """Begin a warm shutdown."""

    def pool_size(self) -> PoolSize | None:
        """The resizable pool's size (prefork), or None for a fixed size."""

    def forward_control(self, method: str, arguments: dict[str, Any]) -> None:
        """Pass a change made by `method` on to the processes running tasks."""


class ControlServer:
    """Answers remote control commands for one worker, on its own thread.

    Args:
        app: The worker's app.
        options: The worker's options (node name, pool, queues).
        state: The pool, for what runs and for changes.
        mailbox: The broker's broadcast channel (this server owns and closes it).
        events: The worker's event dispatcher (enable/disable_events, heartbeat).
    """

    def __init__(
        self,
        app: Celeriac,
        options: WorkerOptions,
        state: WorkerState,
        mailbox: Mailbox,
        *,
        events: EventDispatcher | None = None,
        clock: LamportClock | None = None,
    ) -> None:
        self.app = app
        self.options = options
        self.hostname = options.hostname
        self.state = state
        self.mailbox = mailbox
        self.events = events
        self.clock = clock or LamportClock()
        self.queues = list(options.queues)
        self.started = time.monotonic()
        self.revoked_ids: dict[str, float] = {}
        self._accept = normalize_accept(app.conf.accept_content)
        self._serializer = str(app.conf.task_serializer)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- thread -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="celeriac-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            self.mailbox.close()
        except Exception:  # closing is best effort
            logger.debug("error while closing the control mailbox", exc_info=True)

    def _run(self) -> None:
        listening = False
        reported: str | None = None
        while not self._stop.is_set():
            try:
                if not listening:
                    self.mailbox.listen(self.hostname)
                    listening = True
                    if reported is not None:
                        logger.warning("Remote control: listening again")
                        reported = None
                for message in self.mailbox.receive_commands(timeout=LISTEN_TIMEOUT):
                    self.handle_message(message)
            except BrokerError as exc:
                # Said once until it works again: the worker runs tasks all the same.
                if str(exc) != reported:
                    reported = str(exc)
                    logger.warning(
                        "Remote control: cannot listen as %s (%s); retrying", self.hostname, exc
                    )
                listening = False
                with contextlib.suppress(Exception):
                    self.mailbox.close()
                self._stop.wait(RECONNECT_PAUSE)
            except Exception:  # isolation boundary: the control thread must live on
                logger.exception("Remote control hiccup; continuing")
                self._stop.wait(RECONNECT_PAUSE)

    # -- dispatch -----------------------------------------------------------------------

    def handle_message(self, message: Message) -> None:
        """Run one command message if it is addressed to this node; reply if asked."""
        self.clock.adjust(message.headers.get("clock"))
        try:
            body = unpack(message, accept=self._accept)
        except CeleriacError as exc:
            logger.warning("Remote control: cannot decode a command: %s", exc)
            return
        if not isinstance(body, dict) or not self.is_addressed(body):
            return
        method = str(body.get("method"))
        arguments = body.get("arguments") or {}
        reply_to = body.get("reply_to")
        logger.debug("Remote control: %s(%r) reply_to=%r", method, arguments, reply_to)
        try:
            reply = self.dispatch(method, arguments if isinstance(arguments, dict) else {})
        except NoReply:
            return
        except Exception as exc:  # isolation boundary: one bad command answers an error
            logger.exception("Remote control command %s failed", method)
            reply = {"error": repr(exc)}
        if isinstance(reply_to, dict) and reply_to.get("routing_key"):
            out = pack(
                {self.hostname: reply},
                headers={"ticket": body.get("ticket"), "clock": self.clock.forward()},
                serializer=self._serializer,
            )
            self.mailbox.reply(
                str(reply_to.get("exchange") or self.mailbox.reply_exchange),
                str(reply_to["routing_key"]),
                out,
            )

    def is_addressed(self, body: dict[str, Any]) -> bool:
        destination = body.get("destination")
        if destination:
            return self.hostname in destination
        pattern, matcher = body.get("pattern"), body.get("matcher")
        if pattern and matcher:
            if matcher == "pcre":
                return re.search(str(pattern), self.hostname) is not None
            return fnmatch.fnmatch(self.hostname, str(pattern))
        return True

    def dispatch(self, method: str, arguments: dict[str, Any]) -> Any:
        handler = COMMANDS.get(method)
        if handler is None:
            # kombu answers an unknown method with the KeyError it raised.
            raise KeyError(method)
        return handler(self, **arguments)

    # -- what several commands share ----------------------------------------------------

    def request_info(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return self.state.active_requests(), self.state.reserved_requests()

    def revoke(self, task_ids: list[str], *, terminate: bool) -> None:
        now = time.time()
        for task_id in task_ids:
            self.revoked_ids[task_id] = now
        # The processes running tasks first (they learn it within a fetch), then the
        # backend's log (every other celeriac worker, within a second).
        self.state.forward_control("revoke", {"task_ids": task_ids, "terminate": terminate})
        self.app.control.record_revoked(task_ids, terminate=terminate)
