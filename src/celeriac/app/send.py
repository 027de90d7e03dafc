"""The send path: options → `TaskCall`, route, encode, publish (one by one or batched),
with the publish retry policy.

`Celeriac.send_task` and `Task.apply_async` come here through the app's `Sender`; so does a
retry, whose `TaskCall` the running request builds itself (`Context.retried`) and which
goes straight to the route-and-publish step.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from celeriac import signals
from celeriac._time import UTC
from celeriac.app.context import Context, current_request
from celeriac.brokers.base import Outgoing
from celeriac.exceptions import BrokerConnectionError, ImproperlyConfigured
from celeriac.protocol.codec import TaskCall, encode_task, signature_dicts

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from celeriac import result as _result
    from celeriac.app.base import Celeriac
    from celeriac.app.routing import Route
    from celeriac.app.task import Task

__all__ = ["BATCH_FLUSH_SIZE", "SendConf", "Sender", "resolve_eta"]

# Messages per round trip of `producer_batch`.
BATCH_FLUSH_SIZE = 256
_batch: ContextVar[list[Outgoing] | None] = ContextVar("celeriac_batch", default=None)
# Options a known task fills in from its own attributes when sent by name.
_TASK_DEFAULTS = ("queue", "priority", "expires", "serializer", "time_limit", "soft_time_limit")


@dataclass(frozen=True, slots=True)
class SendConf:
    """The settings the send path reads, snapshotted (see `Sender.conf`)."""

    version: int
    always_eager: bool
    serializer: str
    compression: str | None
    max_size: int | None
    default_priority: int | None
    inherit_priority: bool
    publish_retry: bool
    retry_policy: dict[str, Any]
    uses_rpc: bool
    send_sent_event: bool = False


def _or_none(value: Any) -> Any:
    return value or None


def _dict_or_none(value: Any) -> dict[str, Any] | None:
    return dict(value) if value else None


def _dict(value: Any) -> dict[str, Any]:
    return dict(value or {})


def _count(value: Any) -> int:
    return int(value or 0)


# `apply_async` options carried into a `TaskCall` field as they are (or converted);
# id, parents, timing and priority are worked out by the send path itself.
_FIELDS: dict[str, tuple[str, Callable[[Any], Any] | None]] = {
    "link": ("callbacks", signature_dicts),
    "link_error": ("errbacks", signature_dicts),
    "chain": ("chain", _or_none),
    "chord": ("chord", _dict_or_none),
    "retries": ("retries", _count),
    "time_limit": ("time_limit", None),
    "soft_time_limit": ("soft_time_limit", None),
    "group_id": ("group", None),
    "group_index": ("group_index", None),
    "shadow": ("shadow", None),
    "ignore_result": ("ignore_result", None),
    "reply_to": ("reply_to", None),
    "headers": ("headers", _dict),
    "stamped_headers": ("stamped_headers", None),
    "stamps": ("stamps", _dict),
    "replaced_task_nesting": ("replaced_task_nesting", _count),
}


# Options naming a call and its parents, which a retry keeps unless given anew.
_IDENTITY_OPTIONS = (("task_id", "id"), ("root_id", "root_id"), ("parent_id", "parent_id"))


def _call_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    """The `TaskCall` fields that `options` set directly."""
    fields: dict[str, Any] = {}
    for key, value in options.items():
        entry = _FIELDS.get(key)
        if entry is not None:
            field_name, convert = entry
            fields[field_name] = convert(value) if convert is not None else value
    return fields


def resolve_eta(
    eta: Any, countdown: float | None, *, now: datetime, zone: Callable[[], tzinfo] | None = None
) -> datetime | None:
    """The aware ETA of `countdown` seconds from `now` (which wins), else of `eta`; a naive
    `eta` is read in `zone()` (the app's time zone; UTC when not given)."""
    if countdown is not None:
        return now + timedelta(seconds=float(countdown))
    if isinstance(eta, datetime) and eta.tzinfo is None:
        return eta.replace(tzinfo=zone() if zone is not None else UTC)
    if eta is not None and not isinstance(eta, datetime):
        raise ImproperlyConfigured(f"eta must be a datetime, got {eta!r}")
    return eta


def _instant(
    value: Any, *, now: datetime, what: str, zone: Callable[[], tzinfo] | None = None
) -> datetime | None:
    """An aware instant from seconds-from-now, a timedelta, or a datetime (a naive one
    read in `zone()`, else UTC)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return value
        return value.replace(tzinfo=zone() if zone is not None else UTC)
    if isinstance(value, timedelta):
        return now + value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return now + timedelta(seconds=float(value))
    raise ImproperlyConfigured(f"{what} must be seconds, a timedelta or a datetime, got {value!r}")


class Sender:
    """The app's send path (one per app; `app.sender`)."""

    __slots__ = ("_app", "_conf", "_rpc_reply_to")

    def __init__(self, app: Celeriac) -> None:
        self._app = app
        self._conf: SendConf | None = None
        self._rpc_reply_to: tuple[int, str] | None = None

    def conf(self) -> SendConf:
        """The settings the send path reads, cached until a setting changes."""
        cached = self._conf
        conf = self._app.conf
        if cached is None or cached.version != conf.version:
            policy = {
                "max_retries": 3,
                "interval_start": 0.0,
                "interval_step": 0.2,
                "interval_max": 1.0,
                **conf.task_publish_retry_policy,
            }
            cached = self._conf = SendConf(
                version=conf.version,
                always_eager=conf.task_always_eager,
                serializer=conf.task_serializer,
                compression=conf.task_compression,
                max_size=conf.task_max_message_size,
                default_priority=conf.task_default_priority,
                inherit_priority=conf.task_inherit_parent_priority,
                publish_retry=conf.task_publish_retry,
                retry_policy=policy,
                uses_rpc=self._app.result_backend_url.startswith("rpc://"),
                send_sent_event=bool(conf.task_send_sent_event),
            )
        return cached

    def default_reply_to(self) -> str:
        """The `reply_to` of messages sent from here: with `rpc://` results, this
        process's reply queue (declared before the first message goes out, so no result
        can arrive before it exists); otherwise `thread_oid`, as Celery writes."""
        app = self._app
        if not self.conf().uses_rpc:
            return app.thread_oid
        cached = self._rpc_reply_to
        pid = os.getpid()
        if cached is None or cached[0] != pid:
            queue = app.backend.reply_queue() or app.thread_oid
            cached = self._rpc_reply_to = (pid, queue)
        return cached[1]

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """See `Celeriac.producer_batch`."""
        if _batch.get() is not None:
            yield  # nested: the outer batch sends everything
            return
        items: list[Outgoing] = []
        token = _batch.set(items)
        try:
            yield
        finally:
            _batch.reset(token)
        if items:
            self._with_publish_retry(lambda: self._app.broker.publish_many(items))

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[Outgoing]]:
        """Collect what is published inside the block, as `batch` does, but publish
        nothing: the caller publishes the yielded messages itself (beat, in the same
        atomic step as its run record; else with `publish_captured`)."""
        items: list[Outgoing] = []
        token = _batch.set(items)
        try:
            yield items
        finally:
            _batch.reset(token)

    def publish_captured(self, items: Sequence[Outgoing]) -> None:
        """Publish messages `capture` collected, with the publish retry policy."""
        if items:
            self._with_publish_retry(lambda: self._app.broker.publish_many(items))

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        task: Task[Any, Any] | None,
        options: dict[str, Any],
    ) -> _result.AsyncResult[Any]:
        """See `Celeriac.send_task`."""
        from celeriac.result import AsyncResult

        args = list(args or ())
        kwargs = dict(kwargs or {})
        if task is None:
            known = self._app.tasks.get(name)
            if known is not None:
                for key in _TASK_DEFAULTS:
                    if options.get(key) is None and getattr(known, key) is not None:
                        options[key] = getattr(known, key)
        call, route = self.build_call(name, args, kwargs, options, task=task)
        self.publish(
            call,
            route,
            serializer=options.get("serializer"),
            compression=options.get("compression"),
        )
        parent = current_request()
        if parent is not None and parent.id and options.get("add_to_parent", True):
            parent.children.append([[call.id, None], None])
        return AsyncResult(call.id, app=self._app, task_name=name)

    def build_call(
        self,
        name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        options: Mapping[str, Any],
        *,
        task: Task[Any, Any] | None,
    ) -> tuple[TaskCall, Route]:
        """The call `options` describe, and where it goes."""
        task_id = options.get("task_id") or str(uuid.uuid4())
        parent = current_request()
        parent_id = options.get("parent_id")
        root_id = options.get("root_id")
        if parent is not None and parent.id and not parent.called_directly:
            parent_id = parent_id or parent.id
            root_id = root_id or parent.root_id or parent.id
        now = self._app.now()
        zone = self._zone
        route = self._app.router.route(name, args, kwargs, options, task=task)
        call = TaskCall(
            name=name,
            id=task_id,
            args=args,
            kwargs=kwargs,
            eta=resolve_eta(options.get("eta"), options.get("countdown"), now=now, zone=zone),
            expires=_instant(options.get("expires"), now=now, what="expires", zone=zone),
            root_id=root_id or task_id,
            parent_id=parent_id,
            priority=self._priority(route, parent),
            **_call_fields(options),
        )
        if not call.reply_to:
            call.reply_to = self.default_reply_to()
        return call, route

    def _zone(self) -> tzinfo:
        """The app's time zone (read only for naive datetimes)."""
        return self._app.timezone

    def _priority(self, route: Route, parent: Context | None) -> int | None:
        """The route's priority, else `task_default_priority`, else the parent's (with
        `task_inherit_parent_priority`)."""
        priority = route.priority
        if priority is None:
            conf = self.conf()
            priority = conf.default_priority
            if priority is None and conf.inherit_priority and parent is not None:
                priority = parent.priority
        return priority

    def send_retry(
        self, task: Task[Any, Any], call: TaskCall, queue: str | None, options: Mapping[str, Any]
    ) -> None:
        """Publish `call`, a retry built by the running request, back to `queue` (the one
        it came from); `options` are `apply_async` options given to `retry()`, which win."""
        if options:
            fields = _call_fields(options)
            if options.get("expires") is not None:
                fields["expires"] = _instant(
                    options["expires"], now=self._app.now(), what="expires", zone=self._zone
                )
            for key, field_name in _IDENTITY_OPTIONS:
                if options.get(key):
                    fields[field_name] = options[key]
            call = replace(call, **fields)
        route = self._app.router.route(
            call.name,
            call.args,
            call.kwargs,
            {"queue": queue, "priority": call.priority, **options},
            task=task,
        )
        call.priority = self._priority(route, current_request())
        if not call.reply_to:
            call.reply_to = self.default_reply_to()
        self.publish(
            call,
            route,
            serializer=options.get("serializer"),
            compression=options.get("compression"),
        )

    def publish(
        self,
        call: TaskCall,
        route: Route,
        serializer: str | None = None,
        compression: str | None = None,
    ) -> None:
        """Encode `call` and publish it on `route` (into the open batch, if any)."""
        conf = self.conf()
        message = encode_task(
            call,
            serializer=serializer or conf.serializer,
            compression=compression or conf.compression,
            max_size=conf.max_size,
        )
        eta = call.eta
        deliver_at = eta if eta is not None and eta > self._app.now() else None
        queue, exchange, routing_key = route.queue, route.exchange, route.routing_key
        if signals.before_task_publish.receivers:
            signals.before_task_publish.send(
                sender=call.name,
                body=message.body,
                exchange=exchange,
                routing_key=routing_key,
                headers=message.headers,
                properties=message.properties,
                declare=[queue],
                retry_policy=None,
            )
        app = self._app
        batch = _batch.get()
        if batch is not None:
            batch.append(
                Outgoing(
                    message,
                    queue=queue,
                    eta=deliver_at,
                    priority=call.priority,
                    exchange=exchange,
                    routing_key=routing_key,
                )
            )
            if len(batch) >= BATCH_FLUSH_SIZE:
                # Workers start on these while the rest of the batch is built.
                self._with_publish_retry(lambda: app.broker.publish_many(batch))
                batch.clear()
        else:
            self._with_publish_retry(
                lambda: app.broker.publish(
                    message,
                    queue=queue,
                    eta=deliver_at,
                    priority=call.priority,
                    exchange=exchange,
                    routing_key=routing_key,
                )
            )
        if signals.after_task_publish.receivers:
            signals.after_task_publish.send(
                sender=call.name,
                body=message.body,
                exchange=exchange,
                routing_key=routing_key,
                headers=message.headers,
            )
        if conf.send_sent_event:
            from celeriac.app.events import send_task_sent

            send_task_sent(app, message, queue=queue, exchange=exchange, routing_key=routing_key)

    def _with_publish_retry(self, publish: Callable[[], None]) -> None:
        try:
            publish()
            return
        except BrokerConnectionError:
            conf = self.conf()
            if not conf.publish_retry:
                raise
        policy = conf.retry_policy
        interval = float(policy["interval_start"])
        attempts = 0
        while True:
            try:
                publish()
                return
            except BrokerConnectionError:
                attempts += 1
                if policy["max_retries"] is not None and attempts > policy["max_retries"]:
                    raise
                time.sleep(interval)
                interval = min(
                    interval + float(policy["interval_step"]), float(policy["interval_max"])
                )
