"""OpenTelemetry tracing: a producer's span and the worker's span of the same task joined
in one trace (the `opentelemetry` extra).

```python
from celeriac.contrib.opentelemetry import CeleriacInstrumentor
from celeriac.signals import worker_process_init

CeleriacInstrumentor().instrument()          # producer side: web app, beat, ...

@worker_process_init.connect(weak=False)     # each prefork child, after the fork
def trace_child(**kwargs):
    CeleriacInstrumentor().instrument()
```

The trace context travels in the message headers (W3C `traceparent`/`tracestate`, or
whatever propagator is configured), written by `before_task_publish` and read back by
`task_prerun` from the request's headers: the same place OpenTelemetry's instrumentation
of Celery writes and reads it, so a stock Celery worker instrumented with it continues a
celeriac producer's trace, and the other way round.

Spans, named as that instrumentation names them: `apply_async/<task>` (PRODUCER) around
each publish, `run/<task>` (CONSUMER) around each run, current while the task body runs
(so spans the task makes, and the tasks it sends, are its children). A failure sets the
run span's status to ERROR with the exception recorded; a retry records its reason.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from celeriac import signals
from celeriac.exceptions import ImproperlyConfigured

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - the extra is part of the test set-up
    raise ImproperlyConfigured(
        'tracing needs OpenTelemetry: pip install "celeriac[opentelemetry]"'
    ) from exc

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["CeleriacInstrumentor"]

logger = logging.getLogger(__name__)

# Span names and attributes of OpenTelemetry's Celery instrumentation, so that both kinds
# of worker show the same way in a trace viewer.
PUBLISH_ACTION = "apply_async"
RUN_ACTION = "run"
ACTION_ATTRIBUTE = "celery.action"
TASK_NAME_ATTRIBUTE = "celery.task_name"
STATE_ATTRIBUTE = "celery.state"
RETRY_REASON_ATTRIBUTE = "celery.retry.reason"
MESSAGE_ID_ATTRIBUTE = "messaging.message.id"
# Publishes whose after_task_publish never came (the publish raised) are forgotten past
# this many, oldest first.
MAX_OPEN_PUBLISHES = 10000


class _HeaderGetter(Getter[dict[str, Any]]):
    """Reads a propagator's fields from message headers."""

    def get(self, carrier: dict[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            return [str(item) for item in value]
        return [str(value)]

    def keys(self, carrier: dict[str, Any]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


class CeleriacInstrumentor:
    """Traces publishes and runs through celeriac's signals; `instrument` once per process
    (again in each prefork child, from `worker_process_init`)."""

    def __init__(self) -> None:
        self._tracer: trace.Tracer | None = None
        self._lock = threading.Lock()
        self._publishing: dict[str, Span] = {}
        self._running: dict[str, tuple[Span, object]] = {}

    @property
    def is_instrumented(self) -> bool:
        return self._tracer is not None

    def instrument(self, *, tracer_provider: TracerProvider | None = None) -> None:
        """Connect the receivers; spans go to `tracer_provider` (default: the global one)."""
        if self._tracer is not None:
            return
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        for signal, receiver in self._receivers():
            signal.connect(receiver, weak=False)

    def uninstrument(self) -> None:
        """Disconnect the receivers."""
        for signal, receiver in self._receivers():
            signal.disconnect(receiver)
        self._tracer = None

    def _receivers(self) -> list[tuple[signals.Signal, Any]]:
        return [
            (signals.before_task_publish, self._before_publish),
            (signals.after_task_publish, self._after_publish),
            (signals.task_prerun, self._prerun),
            (signals.task_postrun, self._postrun),
            (signals.task_failure, self._failure),
            (signals.task_retry, self._retry),
        ]

    # -- producer ----------------------------------------------------------------------

    def _before_publish(
        self, sender: Any = None, headers: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        tracer = self._tracer
        if tracer is None or headers is None:
            return
        task_id = headers.get("id")
        name = str(sender or headers.get("task") or "unknown")
        span = tracer.start_span(f"{PUBLISH_ACTION}/{name}", kind=SpanKind.PRODUCER)
        if span.is_recording():
            span.set_attribute(ACTION_ATTRIBUTE, PUBLISH_ACTION)
            span.set_attribute(TASK_NAME_ATTRIBUTE, name)
            if task_id:
                span.set_attribute(MESSAGE_ID_ATTRIBUTE, str(task_id))
        # Written into the headers the message is sent with: the worker's parent.
        propagate.inject(headers, context=trace.set_span_in_context(span))
        if not task_id:
            span.end()
            return
        with self._lock:
            previous = self._publishing.pop(str(task_id), None)
            self._publishing[str(task_id)] = span
            if len(self._publishing) > MAX_OPEN_PUBLISHES:
                del self._publishing[next(iter(self._publishing))]
        if previous is not None:
            previous.end()

    def _after_publish(self, headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
        task_id = (headers or {}).get("id")
        if not task_id:
            return
        with self._lock:
            span = self._publishing.pop(str(task_id), None)
        if span is not None:
            span.end()

    # -- worker ------------------------------------------------------------------------

    def _prerun(self, task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
        tracer = self._tracer
        if tracer is None or task_id is None or task is None:
            return
        parent = self._extract(task)
        span = tracer.start_span(
            f"{RUN_ACTION}/{task.name}", context=parent, kind=SpanKind.CONSUMER
        )
        if span.is_recording():
            span.set_attribute(ACTION_ATTRIBUTE, RUN_ACTION)
            span.set_attribute(TASK_NAME_ATTRIBUTE, task.name)
            span.set_attribute(MESSAGE_ID_ATTRIBUTE, task_id)
        token = otel_context.attach(trace.set_span_in_context(span))
        with self._lock:
            self._running[task_id] = (span, token)

    @staticmethod
    def _extract(task: Any) -> Context | None:
        request = getattr(task, "request", None)
        headers = getattr(request, "headers", None)
        if not isinstance(headers, dict) or not headers:
            return None
        return propagate.extract(headers, getter=_GETTER)

    def _postrun(self, task_id: str | None = None, state: str | None = None, **kwargs: Any) -> None:
        if task_id is None:
            return
        with self._lock:
            found = self._running.pop(task_id, None)
        if found is None:
            return
        span, token = found
        if state and span.is_recording():
            span.set_attribute(STATE_ATTRIBUTE, state)
        span.end()
        otel_context.detach(token)  # type: ignore[arg-type]

    def _failure(
        self, task_id: str | None = None, exception: BaseException | None = None, **kwargs: Any
    ) -> None:
        span = self._running_span(task_id)
        if span is None or not span.is_recording():
            return
        if exception is not None:
            span.record_exception(exception)
        span.set_status(Status(StatusCode.ERROR, repr(exception) if exception else None))

    def _retry(self, request: Any = None, reason: Any = None, **kwargs: Any) -> None:
        span = self._running_span(getattr(request, "id", None))
        if span is not None and span.is_recording() and reason is not None:
            span.set_attribute(RETRY_REASON_ATTRIBUTE, str(reason))

    def _running_span(self, task_id: str | None) -> Span | None:
        if task_id is None:
            return None
        with self._lock:
            found = self._running.get(task_id)
        return found[0] if found is not None else None
