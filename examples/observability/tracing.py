"""OpenTelemetry for a celeriac project: one trace from the request that sends a task to
the worker that runs it.

    pip install "celeriac[opentelemetry]" opentelemetry-exporter-otlp
    celeriac -A tracing worker -l info          # the worker
    python tracing.py                           # a producer, inside a span of its own

Spans print to the console here; swap `ConsoleSpanExporter` for an OTLP exporter to send
them to a collector (Jaeger, Tempo, Honeycomb, ...).
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from celeriac import Celeriac
from celeriac.contrib.opentelemetry import CeleriacInstrumentor
from celeriac.signals import worker_process_init

app = Celeriac("tracing", broker=os.environ.get("BROKER_URL", "redis://localhost:6379/0"))


def start_tracing(service: str) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    CeleriacInstrumentor().instrument()


@worker_process_init.connect(weak=False)
def trace_child(**kwargs: object) -> None:
    # Each prefork child, after the fork: the exporter's thread does not survive one.
    start_tracing("worker")


@app.task
def add(x: int, y: int) -> int:
    with trace.get_tracer(__name__).start_as_current_span("adding"):  # a child of run/add
        return x + y


if __name__ == "__main__":
    start_tracing("web")
    with trace.get_tracer(__name__).start_as_current_span("request"):
        print(add.delay(2, 3).get(timeout=10))
    trace.get_tracer_provider().shutdown()  # type: ignore[attr-defined]
