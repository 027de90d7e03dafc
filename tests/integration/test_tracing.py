"""OpenTelemetry across processes: the test process publishes inside a span of its own; a
real worker (celeriac prefork, or stock Celery with OpenTelemetry's Celery instrumentation)
runs the task and writes its spans to a file; the two must form one trace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from celeriac.contrib.opentelemetry import CeleriacInstrumentor
from tests.helpers import require_redis, unique, wait_for
from tests.integration.conftest import RunWorker, import_tasks, write_tasks
from tests.integration.worker_tasks import APP

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from opentelemetry.sdk.trace import ReadableSpan

pytestmark = [pytest.mark.integration, pytest.mark.redis]

# Spans a worker ends go to spans.jsonl beside its module, one JSON object a line.
FILE_EXPORTER = """
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class FileExporter(SpanExporter):
    def export(self, spans):
        with open(HERE / "spans.jsonl", "a") as out:
            for span in spans:
                out.write(json.dumps({
                    "name": span.name,
                    "trace_id": span.context.trace_id,
                    "span_id": span.context.span_id,
                    "parent": span.parent.span_id if span.parent else None,
                    "kind": span.kind.name,
                    "status": span.status.status_code.name,
                    "attributes": dict(span.attributes or {}),
                }) + "\\n")
        return SpanExportResult.SUCCESS


def file_provider():
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    return provider


def current_trace_id():
    return format(trace.get_current_span().get_span_context().trace_id, "032x")
"""

SOURCE = (
    """
import os
from pathlib import Path

from celeriac import Celeriac
from celeriac.contrib.opentelemetry import CeleriacInstrumentor
from celeriac.signals import worker_process_init

HERE = Path(__file__).resolve().parent
"""
    + APP
    + FILE_EXPORTER
    + """

@worker_process_init.connect(weak=False)
def trace_child(**kwargs):
    CeleriacInstrumentor().instrument(tracer_provider=file_provider())


@app.task
def traced():
    return current_trace_id()


@app.task
def broken():
    raise ValueError("broken on purpose")
"""
)

STOCK_SOURCE = """
from pathlib import Path

import celery
from opentelemetry.instrumentation.celery import CeleryInstrumentor

HERE = Path(__file__).resolve().parent
{exporter}

CeleryInstrumentor().instrument(tracer_provider=file_provider())

app = celery.Celery("stock", broker={broker!r}, backend={broker!r}, set_as_current=False)
app.conf.update(
    task_default_queue={queue!r},
    broker_transport_options={{"global_keyprefix": {prefix!r}}},
    result_backend_transport_options={{"global_keyprefix": {prefix!r}}},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="tasks.traced")
def traced():
    return current_trace_id()
"""


@pytest.fixture
def exporter() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    """The test process's spans, kept in memory; instrumented for the test only."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    instrumentor = CeleriacInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    yield memory, provider
    instrumentor.uninstrument()
    provider.shutdown()


@pytest.fixture
def tasks(tasks_dir: Path, broker_env: str) -> Any:
    write_tasks(tasks_dir, SOURCE)
    module = import_tasks(tasks_dir)
    yield module
    module.app.close()


def worker_spans(directory: Path, name: str) -> list[dict[str, Any]]:
    path = directory / "spans.jsonl"
    if not path.exists():
        return []
    spans = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [span for span in spans if span["name"] == name]


def published(memory: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = [s for s in memory.get_finished_spans() if s.name == f"apply_async/{name}"]
    return span


def assert_one_trace(
    request_span: Any, result: Any, memory: InMemorySpanExporter, tasks_dir: Path, *, timeout: float
) -> None:
    """The task ran inside the request's trace, and the worker's span is the child of the
    producer's publish span."""
    trace_id = request_span.get_span_context().trace_id
    assert result.get(timeout=timeout) == format(trace_id, "032x")
    publish = published(memory, "tasks.traced")
    assert publish.context is not None
    [run] = wait_for(lambda: worker_spans(tasks_dir, "run/tasks.traced"), timeout=10)
    assert run["trace_id"] == trace_id
    assert run["parent"] == publish.context.span_id


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_the_worker_span_continues_the_producer_trace(
    tasks: Any, tasks_dir: Path, run_worker: RunWorker, exporter: Any
) -> None:
    memory, provider = exporter
    worker = run_worker("-c", "2")
    with provider.get_tracer("test").start_as_current_span("request") as request_span:
        result = tasks.traced.delay()
    trace_id = request_span.get_span_context().trace_id
    # The task body ran inside the trace...
    assert result.get(timeout=20) == format(trace_id, "032x")
    publish = published(memory, "tasks.traced")
    assert publish.kind.name == "PRODUCER"
    assert publish.parent is not None
    assert publish.parent.span_id == request_span.get_span_context().span_id
    assert publish.context is not None
    # ...under a CONSUMER span whose parent is the publish span, from another process.
    [run] = wait_for(lambda: worker_spans(tasks_dir, "run/tasks.traced"), timeout=10)
    assert run["trace_id"] == trace_id
    assert run["parent"] == publish.context.span_id
    assert run["kind"] == "CONSUMER"
    assert run["attributes"]["celery.task_name"] == "tasks.traced"
    assert run["attributes"]["celery.state"] == "SUCCESS"
    assert run["attributes"]["messaging.message.id"] == result.id
    # The run span's context was attached and detached in the same context.
    assert "Failed to detach context" not in worker.output()


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_a_failed_task_marks_its_span_as_an_error(
    tasks: Any, tasks_dir: Path, run_worker: RunWorker, exporter: Any
) -> None:
    run_worker("-c", "1")
    result = tasks.broken.delay()
    with pytest.raises(ValueError, match="broken on purpose"):
        result.get(timeout=20)
    [run] = wait_for(lambda: worker_spans(tasks_dir, "run/tasks.broken"), timeout=10)
    assert run["status"] == "ERROR"
    assert run["attributes"]["celery.state"] == "FAILURE"


def test_a_stock_celery_worker_joins_the_trace_of_a_celeriac_producer(
    tasks_dir: Path, exporter: Any
) -> None:
    from celeriac import Celeriac

    memory, provider = exporter
    broker = require_redis()
    name = unique("otel")
    prefix = f"{name}:"
    source = STOCK_SOURCE.format(exporter=FILE_EXPORTER, broker=broker, queue=name, prefix=prefix)
    (tasks_dir / "stockproj.py").write_text(textwrap.dedent(source))
    log = (tasks_dir / "celery.log").open("wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "stockproj",
            "worker",
            "-P",
            "solo",
            "-Q",
            name,
            "--without-mingle",
            "--without-gossip",
            "-l",
            "info",
        ],
        cwd=tasks_dir,
        env={**os.environ, "PYTHONPATH": str(tasks_dir)},
        stdout=log,
        stderr=log,
    )
    log.close()
    app = Celeriac(
        "producer",
        broker=broker,
        backend=broker,
        task_default_queue=name,
        # ETA messages straight to the list, where a stock worker looks.
        broker_transport_options={"global_keyprefix": prefix, "broker_side_eta": False},
        result_backend_transport_options={"global_keyprefix": prefix},
    )
    try:
        with provider.get_tracer("test").start_as_current_span("request") as request_span:
            result = app.send_task("tasks.traced")
        assert_one_trace(request_span, result, memory, tasks_dir, timeout=60)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)
        app.close()
        import redis

        client = redis.Redis.from_url(broker)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_a_celeriac_worker_joins_the_trace_of_a_stock_celery_producer(
    tasks: Any, tasks_dir: Path, run_worker: RunWorker
) -> None:
    import celery
    from celery.exceptions import DuplicateTaskNameWarning
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    instrumentor.instrument(tracer_provider=provider)
    prefix = os.environ["TEST_KEY_PREFIX"]
    producer = celery.Celery(
        "stock", broker=require_redis(), backend=require_redis(), set_as_current=False
    )
    producer.conf.update(
        task_default_queue=os.environ["TEST_QUEUE"],
        broker_transport_options={"global_keyprefix": prefix},
        result_backend_transport_options={"global_keyprefix": prefix},
    )
    run_worker("-c", "1")
    try:
        with (
            provider.get_tracer("test").start_as_current_span("request") as request_span,
            warnings.catch_warnings(),
        ):
            # The instrumentation looks the task up in Celery's current app, which
            # finalizes it with every `shared_task` this process has imported: earlier
            # tests load two modules that define the same stock task name, and the
            # suite turns Celery's DuplicateTaskNameWarning into an error that would
            # abort the publish span (the task is not found either way: send_task).
            warnings.simplefilter("ignore", DuplicateTaskNameWarning)
            result = producer.send_task("tasks.traced")
        assert_one_trace(request_span, result, memory, tasks_dir, timeout=30)
    finally:
        instrumentor.uninstrument()
        producer.close()
        provider.shutdown()
