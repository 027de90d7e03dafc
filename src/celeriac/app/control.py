"""`app.control`: Celery's remote control client, and revocation.

Commands travel over the broker's broadcast channel (kombu's pidbox, see
`brokers/mailbox.py`), so they reach celeriac and stock Celery workers alike, and
replies come back as Celery shapes them: `broadcast(..., reply=True)` returns a list of
`{node: reply}`; `inspect()` methods merge those into one `{node: reply}` dict (None
when nobody answered within `timeout`).

`revoke` does both halves of a mixed fleet: it records REVOKED in the result backend
(readers see it at once, as Celery 5.6+ does) and appends the ids to the backend's
revocation log, which every celeriac worker process follows (about once a second); and
it broadcasts Celery's `revoke` command, which stock workers act on. A celeriac worker
that receives the broadcast records it in the log too, so a revoke sent by a stock
client reaches every celeriac worker.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from celeriac import states

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from celeriac.app.base import Celeriac
    from celeriac.brokers.mailbox import Mailbox

__all__ = ["Control", "Inspect", "open_app_mailbox"]

# Celery's default signal for revoke(terminate=True).
TERM_SIGNAME = "SIGTERM"


def open_app_mailbox(app: Celeriac) -> Mailbox | None:
    """A new broadcast channel of `app`'s broker, or None where it has none (memory://)."""
    from celeriac.brokers.mailbox import open_mailbox, supports_mailbox

    if not supports_mailbox(app.broker_url):
        return None
    conf = app.conf
    return open_mailbox(
        app.broker_url,
        transport_options=app.broker_transport_options(),
        namespace=str(conf.get("control_exchange") or "celery"),
        event_exchange=str(conf.get("event_exchange") or "celeryev"),
    )


class Inspect:
    """`app.control.inspect(...)`: ask workers what they are doing.

    Each method broadcasts one command and returns `{node: reply}`, or None when no
    worker answered within `timeout`.
    """

    def __init__(
        self,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
        callback: Callable[[Any], Any] | None = None,
        connection: Any = None,
        app: Celeriac | None = None,
        limit: int | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
    ) -> None:
        if app is None:
            raise TypeError("Inspect needs an app: use app.control.inspect()")
        self.app = app
        self.destination = destination
        self.timeout = timeout
        self.callback = callback
        self.limit = limit
        self.pattern = pattern
        self.matcher = matcher

    def _request(self, command: str, **kwargs: Any) -> dict[str, Any] | None:
        replies = self.app.control.broadcast(
            command,
            arguments=kwargs,
            destination=self.destination,
            reply=True,
            timeout=self.timeout,
            callback=self.callback,
            limit=self.limit,
            pattern=self.pattern,
            matcher=self.matcher,
        )
        merged: dict[str, Any] = {}
        for reply in replies or ():
            if isinstance(reply, dict):
                merged.update(reply)
        return merged or None

    def report(self) -> dict[str, Any] | None:
        return self._request("report")

    def clock(self) -> dict[str, Any] | None:
        return self._request("clock")

    def active(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request("active", safe=safe)

    def scheduled(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request("scheduled", safe=safe)

    def reserved(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request("reserved", safe=safe)

    def stats(self) -> dict[str, Any] | None:
        return self._request("stats")

    def revoked(self) -> dict[str, Any] | None:
        return self._request("revoked")

    def registered(self, *taskinfoitems: str) -> dict[str, Any] | None:
        return self._request("registered", taskinfoitems=list(taskinfoitems))

    registered_tasks = registered

    def ping(self, destination: Sequence[str] | None = None) -> dict[str, Any] | None:
        if destination is not None:
            self.destination = destination
        return self._request("ping")

    def active_queues(self) -> dict[str, Any] | None:
        return self._request("active_queues")

    def query_task(self, *ids: str | Sequence[str]) -> dict[str, Any] | None:
        flat: list[str] = []
        for item in ids:
            flat.extend([item] if isinstance(item, str) else item)
        return self._request("query_task", ids=flat)

    def conf(self, with_defaults: bool = False) -> dict[str, Any] | None:
        return self._request("conf", with_defaults=with_defaults)

    def hello(self, from_node: str, revoked: Any = None) -> dict[str, Any] | None:
        return self._request("hello", from_node=from_node, revoked=revoked)

    def memsample(self) -> dict[str, Any] | None:
        return self._request("memsample")

    def memdump(self, samples: int = 10) -> dict[str, Any] | None:
        return self._request("memdump", samples=samples)

    def objgraph(
        self, type: str = "Request", n: int = 200, max_depth: int = 10
    ) -> dict[str, Any] | None:
        return self._request("objgraph", num=n, max_depth=max_depth, type=type)


class Control:
    """`app.control`: broadcast commands to workers; revoke tasks."""

    def __init__(self, app: Celeriac) -> None:
        self.app = app
        self._mailbox: Mailbox | None = None
        self._mailbox_pid = 0
        self._lock = threading.Lock()
        self._clock = 0

    # -- the channel --------------------------------------------------------------------

    def mailbox(self) -> Mailbox:
        """This process's broadcast channel (opened on first use)."""
        from celeriac.brokers.mailbox import open_mailbox

        pid = os.getpid()
        if self._mailbox is None or self._mailbox_pid != pid:
            mailbox = open_app_mailbox(self.app)
            if mailbox is None:
                # Raises the error that names the transport.
                mailbox = open_mailbox(self.app.broker_url)
            self._mailbox = mailbox
            self._mailbox_pid = pid
        return self._mailbox

    def close(self) -> None:
        """Close the broadcast channel (the next command opens it again)."""
        with self._lock:
            mailbox, self._mailbox = self._mailbox, None
        if mailbox is not None:
            mailbox.close()

    def inspect(
        self,
        destination: Sequence[str] | None = None,
        timeout: float = 1.0,
        callback: Callable[[Any], Any] | None = None,
        connection: Any = None,
        limit: int | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
    ) -> Inspect:
        return Inspect(
            destination=destination,
            timeout=timeout,
            callback=callback,
            connection=connection,
            app=self.app,
            limit=limit,
            pattern=pattern,
            matcher=matcher,
        )

    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        destination: Sequence[str] | None = None,
        connection: Any = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
        callback: Callable[[Any], Any] | None = None,
        channel: Any = None,
        pattern: str | None = None,
        matcher: str | None = None,
        **extra_kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        """Send `command` to the workers; with `reply`, collect their answers.

        Args:
            command: The command (`ping`, `stats`, `revoke`, ...).
            arguments: Its keyword arguments.
            destination: Node names to address (default: every worker).
            reply: Wait for replies (until `timeout`, or `limit` replies).
            timeout: Seconds to wait for replies.
            limit: Stop after this many replies (default: len(destination), if given).
            callback: Called with each reply as it arrives.
            pattern: Address the nodes whose name matches (with `matcher`).
            matcher: `glob` (default) or `pcre`.

        Returns:
            With `reply`, the list of `{node: value}` replies; otherwise None.
        """
        from celeriac.brokers.mailbox import pack, unpack
        from celeriac.protocol.serializers import normalize_accept

        if destination is not None and not isinstance(destination, list | tuple):
            raise ValueError(f"destination must be a list/tuple not {type(destination)}")
        if connection is not None or channel is not None:
            raise ValueError(
                "celeriac opens its own broadcast connection: connection= and channel= "
                "are not supported"
            )
        arguments = {**(arguments or {}), **extra_kwargs}
        if limit is None and destination:
            limit = len(destination)
        conf = self.app.conf
        body: dict[str, Any] = {
            "method": command,
            "arguments": arguments,
            "destination": list(destination) if destination else None,
            "pattern": pattern,
            "matcher": matcher,
        }
        with self._lock:
            mailbox = self.mailbox()
            oid = str(uuid.uuid4())
            ticket = str(uuid.uuid4()) if reply else None
            if reply:
                body["ticket"] = ticket
                body["reply_to"] = {"exchange": mailbox.reply_exchange, "routing_key": oid}
                mailbox.open_replies(oid)
            self._clock += 1
            headers = {"clock": self._clock, "expires": time.time() + timeout if timeout else 0}
            try:
                mailbox.publish_command(
                    pack(body, headers=headers, serializer=str(conf.task_serializer))
                )
                if not reply:
                    return None
                accept = normalize_accept(conf.accept_content)
                replies: list[dict[str, Any]] = []
                deadline = time.monotonic() + timeout
                while limit is None or len(replies) < limit:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    for message in mailbox.receive_replies(oid, timeout=left):
                        if message.headers.get("ticket", ticket) != ticket:
                            continue
                        value = unpack(message, accept=accept)
                        if callback is not None:
                            callback(value)
                        replies.append(value)
                return replies
            finally:
                if reply:
                    mailbox.close_replies(oid)

    # -- commands -----------------------------------------------------------------------

    def ping(
        self, destination: Sequence[str] | None = None, timeout: float = 1.0, **kwargs: Any
    ) -> list[dict[str, Any]]:
        return (
            self.broadcast("ping", reply=True, destination=destination, timeout=timeout, **kwargs)
            or []
        )

    def record_revoked(self, task_ids: Sequence[str], *, terminate: bool = False) -> None:
        """celeriac's half of a revoke: REVOKED in the backend, ids in its revocation log."""
        ids = list(task_ids)
        backend = self.app.backend
        existing = backend.get_many(ids)
        for one in ids:
            meta = existing.get(one)
            if meta is not None and meta.is_ready:
                continue
            backend.store(
                backend.ready_meta(
                    one,
                    states.REVOKED,
                    {
                        "exc_type": "TaskRevokedError",
                        "exc_message": ["revoked"],
                        "exc_module": "celery.exceptions",
                    },
                )
            )
        if backend.supports_revocation:
            backend.revoke(ids, terminate=terminate)

    def revoke(
        self,
        task_id: str | Sequence[str],
        destination: Sequence[str] | None = None,
        terminate: bool = False,
        signal: str | int = TERM_SIGNAME,
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        """Revoke tasks: not-yet-finished ones are recorded as REVOKED and not run.

        Args:
            task_id: One id or several.
            destination: Only these workers act on the broadcast (default: all).
            terminate: Also stop the task if it is running (prefork: its child process
                is killed and replaced; other pools skip only tasks not yet started).
            signal: The signal stock workers send with `terminate` (celeriac's prefork
                workers kill the child).
        """
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        self.record_revoked(ids, terminate=terminate)
        if not self._has_broadcast():
            return None
        return self.broadcast(
            "revoke",
            destination=destination,
            arguments={"task_id": ids, "terminate": terminate, "signal": signal},
            **kwargs,
        )

    def terminate(
        self,
        task_id: str | Sequence[str],
        destination: Sequence[str] | None = None,
        signal: str | int = TERM_SIGNAME,
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        return self.revoke(
            task_id, destination=destination, terminate=True, signal=signal, **kwargs
        )

    def revoke_by_stamped_headers(
        self,
        headers: dict[str, Any],
        destination: Sequence[str] | None = None,
        terminate: bool = False,
        signal: str | int = TERM_SIGNAME,
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        return self.broadcast(
            "revoke_by_stamped_headers",
            destination=destination,
            arguments={"headers": headers, "terminate": terminate, "signal": signal},
            **kwargs,
        )

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | float | None,
        destination: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        return self.broadcast(
            "rate_limit",
            destination=destination,
            arguments={"task_name": task_name, "rate_limit": rate_limit},
            **kwargs,
        )

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        destination: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        return self.broadcast(
            "time_limit",
            destination=destination,
            arguments={"task_name": task_name, "soft": soft, "hard": hard},
            **kwargs,
        )

    def add_consumer(
        self,
        queue: str,
        exchange: str | None = None,
        exchange_type: str = "direct",
        routing_key: str | None = None,
        options: dict[str, Any] | None = None,
        destination: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        return self.broadcast(
            "add_consumer",
            destination=destination,
            arguments={
                "queue": queue,
                "exchange": exchange,
                "exchange_type": exchange_type,
                "routing_key": routing_key,
                **(options or {}),
            },
            **kwargs,
        )

    def cancel_consumer(
        self, queue: str, destination: Sequence[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        return self.broadcast(
            "cancel_consumer", destination=destination, arguments={"queue": queue}, **kwargs
        )

    def shutdown(
        self, destination: Sequence[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        return self.broadcast("shutdown", destination=destination, **kwargs)

    def pool_grow(
        self, n: int = 1, destination: Sequence[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        return self.broadcast("pool_grow", destination=destination, arguments={"n": n}, **kwargs)

    def pool_shrink(
        self, n: int = 1, destination: Sequence[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        return self.broadcast("pool_shrink", destination=destination, arguments={"n": n}, **kwargs)

    def autoscale(
        self, max: int, min: int, destination: Sequence[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        return self.broadcast(
            "autoscale", destination=destination, arguments={"max": max, "min": min}, **kwargs
        )

    def enable_events(
        self, destination: Sequence[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        return self.broadcast("enable_events", destination=destination, **kwargs)

    def disable_events(
        self, destination: Sequence[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        return self.broadcast("disable_events", destination=destination, **kwargs)

    def heartbeat(
        self, destination: Sequence[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | None:
        return self.broadcast("heartbeat", destination=destination, **kwargs)

    def purge(self) -> int:
        """Discard every waiting task of the app's default queue; return how many."""
        broker = self.app.broker
        return broker.purge(str(self.app.conf.task_default_queue))

    discard_all = purge

    def _has_broadcast(self) -> bool:
        from celeriac.brokers.mailbox import supports_mailbox

        return supports_mailbox(self.app.broker_url)
