"""`task_queues`: Celery's kombu `Queue`/`Exchange` objects, read without kombu.

```python
from kombu import Exchange, Queue          # or any objects with the same attributes

app.conf.task_queues = [
    Queue("default"),
    Queue("videos", Exchange("media"), routing_key="media.video"),
    Queue("urgent", queue_arguments={"x-max-priority": 10}),
]
```

Each queue becomes a `QueueSpec`. A worker started without `-Q` consumes every queue
listed (as Celery's does); a task routed to a listed queue is published to that queue's
exchange with its routing key; on RabbitMQ the worker declares the exchange (with its
type), the queue (with its arguments) and the binding at start, as kombu would.

Celery's dict form (`{"videos": {"exchange": "media", "routing_key": "media.video"}}`)
is read too. A queue attribute celeriac cannot honour (a non-durable, exclusive or
auto-delete queue, extra bindings, a `headers` exchange) is refused, naming it.

A queue with no exchange is declared the way celeriac declares every queue: its own
direct exchange, bound with the queue's name (Celery's `task_create_missing_queues` layout).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, final

from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.config import Settings

__all__ = ["QueueSpec", "parse_queues", "queue_transport_options"]

# Exchange types RabbitMQ routes by key (a `headers` exchange needs headers celeriac
# does not set).
EXCHANGE_TYPES = ("direct", "topic", "fanout")


@final
@dataclass(frozen=True, slots=True)
class QueueSpec:
    """One entry of `task_queues`.

    `exchange` is empty when the queue uses celeriac's own layout (a direct exchange of
    the queue's name).
    """

    name: str
    exchange: str = ""
    exchange_type: str = "direct"
    routing_key: str = ""
    arguments: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def _fail(what: Any, problem: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"task_queues entry {what!r}: {problem}")


def _exchange_of(entry: Any, raw: Any) -> tuple[str, str]:
    if raw is None or raw == "":
        return "", "direct"
    if isinstance(raw, str):
        return raw, "direct"
    name = getattr(raw, "name", None)
    if not isinstance(name, str):
        raise _fail(entry, f"exchange {raw!r} has no name")
    kind = getattr(raw, "type", None) or "direct"
    if kind not in EXCHANGE_TYPES:
        raise _fail(entry, f"exchange type {kind!r} is not supported: use direct, topic or fanout")
    if getattr(raw, "durable", True) is False or getattr(raw, "auto_delete", False):
        raise _fail(entry, "exchanges are declared durable and not auto-delete; drop those flags")
    return name, str(kind)


def _spec_of(entry: Any) -> QueueSpec:
    name = getattr(entry, "name", None)
    if not isinstance(name, str) or not name:
        raise _fail(entry, "expected a kombu-style Queue (with a name), or a dict of them")
    if getattr(entry, "durable", True) is False:
        raise _fail(entry, "celeriac declares durable queues only; drop durable=False")
    for flag in ("exclusive", "auto_delete", "no_ack"):
        if getattr(entry, flag, False):
            raise _fail(entry, f"{flag}=True is not supported for task queues; drop it")
    if getattr(entry, "bindings", None):
        raise _fail(entry, "extra bindings are not supported; one exchange per queue")
    exchange, kind = _exchange_of(entry, getattr(entry, "exchange", None))
    routing_key = getattr(entry, "routing_key", None) or ""
    if not isinstance(routing_key, str):
        raise _fail(entry, f"routing_key {routing_key!r} is not a string")
    arguments = dict(getattr(entry, "queue_arguments", None) or {})
    max_priority = getattr(entry, "max_priority", None)
    if max_priority is not None:
        arguments.setdefault("x-max-priority", max_priority)
    if exchange and not routing_key and kind != "fanout":
        routing_key = name
    return QueueSpec(name, exchange, kind, routing_key, arguments)


class _Options:
    """A dict-form entry (`{"exchange": ..., "routing_key": ...}`) as an object."""

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {
            "exchange",
            "exchange_type",
            "routing_key",
            "binding_key",
            "queue_arguments",
        }
        if unknown:
            raise _fail(name, f"unknown option(s) {', '.join(sorted(unknown))}")
        self.name = name
        exchange = options.get("exchange")
        kind = options.get("exchange_type")
        if isinstance(exchange, str) and kind:
            exchange = _NamedExchange(exchange, kind)
        self.exchange = exchange
        self.routing_key = options.get("routing_key") or options.get("binding_key")
        self.queue_arguments = options.get("queue_arguments")

    def __repr__(self) -> str:
        return repr(self.name)


@dataclass(frozen=True, slots=True)
class _NamedExchange:
    name: str
    type: str


def parse_queues(value: Any) -> dict[str, QueueSpec]:
    """`task_queues` (a list of Queue-like objects, or Celery's dict form) by name.

    Raises:
        ImproperlyConfigured: an entry celeriac cannot declare as asked.
    """
    if value is None:
        return {}
    entries: Iterable[Any]
    if isinstance(value, Mapping):
        entries = [_Options(str(k), v if isinstance(v, Mapping) else {}) for k, v in value.items()]
    elif isinstance(value, str) or not isinstance(value, Iterable):
        raise ImproperlyConfigured(
            f"setting task_queues={value!r} is not usable: write a list of "
            "kombu.Queue(...) objects (or objects with name, exchange and routing_key)"
        )
    else:
        entries = value
    specs: dict[str, QueueSpec] = {}
    for entry in entries:
        spec = _spec_of(entry)
        if spec.name in specs:
            raise _fail(entry, "listed twice")
        specs[spec.name] = spec
    return specs


def queue_transport_options(conf: Settings) -> dict[str, Any]:
    """Broker transport options that make the broker declare `task_queues` as listed."""
    specs = parse_queues(conf.task_queues)
    arguments = {name: spec.arguments for name, spec in specs.items() if spec.arguments}
    kinds = {spec.exchange: spec.exchange_type for spec in specs.values() if spec.exchange}
    options: dict[str, Any] = {}
    if arguments:
        options["queue_arguments"] = arguments
    if kinds:
        options["exchange_types"] = kinds
    return options
