"""One worker's task metrics, and the endpoint `celeriac worker --metrics-port` serves.

| metric | labels | what |
|---|---|---|
| `celeriac_tasks_total` | task, state | tasks that ended, by final state (lower case) |
| `celeriac_task_runtime_seconds` | task | histogram, from `task_prerun` to `task_postrun` |
| `celeriac_redeliveries_total` | task | messages received again (lease lapsed, recovered) |
| `celeriac_worker_crashes_total` | reason | prefork children lost: crashed, time_limit |

States: success, failure, retry and ignored (from `task_postrun`), revoked, unknown (an
unregistered task name, labelled `task="(unregistered)"` so that hostile names cannot
grow the series without bound) and rejected (a message that could not be decoded,
`task="(undecodable)"`).

Why prometheus_client's multiprocess mode: a prefork child is a complete consumer, so the
counts are made in the children while the supervisor serves the endpoint. In that mode
every process writes its values to memory-mapped files of its own in one directory, and
the supervisor sums the files at each scrape. A count is in its file the moment it is
made, so a child that crashes or is replaced (`--max-tasks-per-child`) loses none, and
the pipe from the supervisor to its children stays one-way (remote control only). The
directory is private and temporary, removed when the worker exits; every pool uses the
same path (the threads, solo and asyncio pools simply have one process writing).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

from celeriac import signals
from celeriac.exceptions import ImproperlyConfigured
from celeriac.metrics.client import require_client

if TYPE_CHECKING:
    from http.server import HTTPServer

__all__ = ["MULTIPROCESS_ENV", "TaskMetrics", "WorkerMetrics"]

logger = logging.getLogger(__name__)

# prometheus_client reads it when it is first imported: set before that, or it keeps
# every value in the memory of the process that made it.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Runtime buckets, in seconds: from a few milliseconds to an hour-long task.
RUNTIME_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
UNREGISTERED = "(unregistered)"
UNDECODABLE = "(undecodable)"


class TaskMetrics:
    """The worker's counters and histogram, fed by the task signals once `connect`ed."""

    def __init__(self) -> None:
        require_client()
        from prometheus_client import Counter, Histogram

        # Not registered anywhere: in multiprocess mode the values are read back from
        # their files by the endpoint's collector.
        self.tasks = Counter(
            "celeriac_tasks",
            "Tasks that ended in this worker, by task name and final state.",
            ["task", "state"],
            registry=None,
        )
        self.runtime = Histogram(
            "celeriac_task_runtime_seconds",
            "Seconds from a task's start to its end (its body and storing its result).",
            ["task"],
            buckets=RUNTIME_BUCKETS,
            registry=None,
        )
        self.redeliveries = Counter(
            "celeriac_redeliveries",
            "Messages this worker received that had been handed out before.",
            ["task"],
            registry=None,
        )
        self.crashes = Counter(
            "celeriac_worker_crashes",
            "Prefork children that died without being asked to, by reason.",
            ["reason"],
            registry=None,
        )
        # Known label values start at 0, so a rate over them is defined before the first.
        for reason in ("crashed", "time_limit"):
            self.crashes.labels(reason=reason)
        self._started: dict[str, float] = {}

    def connect(self) -> None:
        """Connect the receivers (strongly: this object keeps them alive)."""
        for signal, receiver in (
            (signals.task_received, self._on_received),
            (signals.task_prerun, self._on_prerun),
            (signals.task_postrun, self._on_postrun),
            (signals.task_revoked, self._on_revoked),
            (signals.task_unknown, self._on_unknown),
            (signals.task_rejected, self._on_rejected),
            (signals.worker_process_lost, self._on_process_lost),
        ):
            signal.connect(receiver, weak=False, dispatch_uid=("celeriac.metrics", signal.name))

    def _on_received(self, request: Any = None, **kwargs: Any) -> None:
        delivery = getattr(request, "delivery", None)
        if delivery is not None and delivery.redelivered:
            self.redeliveries.labels(task=request.task.name).inc()

    def _on_prerun(self, task_id: str | None = None, **kwargs: Any) -> None:
        if task_id is not None:
            self._started[task_id] = time.monotonic()

    def _on_postrun(
        self, task: Any = None, task_id: str | None = None, state: str = "", **kwargs: Any
    ) -> None:
        name = getattr(task, "name", None) or UNREGISTERED
        self.tasks.labels(task=name, state=state.lower()).inc()
        started = self._started.pop(task_id, None) if task_id is not None else None
        if started is not None:
            self.runtime.labels(task=name).observe(time.monotonic() - started)

    def _on_revoked(self, sender: Any = None, **kwargs: Any) -> None:
        # The sender is the registered task, or only its name when it is not registered.
        name = sender.name if hasattr(sender, "name") else UNREGISTERED
        self.tasks.labels(task=name, state="revoked").inc()

    def _on_unknown(self, **kwargs: Any) -> None:
        self.tasks.labels(task=UNREGISTERED, state="unknown").inc()

    def _on_rejected(self, **kwargs: Any) -> None:
        self.tasks.labels(task=UNDECODABLE, state="rejected").inc()

    def _on_process_lost(self, reason: str = "crashed", **kwargs: Any) -> None:
        if reason != "terminated":  # stopped on purpose by a revoke: not a crash
            self.crashes.labels(reason=reason).inc()


class WorkerMetrics:
    """The worker's `/metrics` endpoint: `prepare` before the app is imported, `start`
    once the options are known, `close` when the worker exits."""

    def __init__(self, directory: str, *, owned: bool) -> None:
        self.directory = directory
        self._owned = owned
        self._server: HTTPServer | None = None
        self.task_metrics: TaskMetrics | None = None

    @classmethod
    def prepare(cls) -> WorkerMetrics:
        """Turn on prometheus_client's multiprocess mode in a private temporary directory
        (or the one `PROMETHEUS_MULTIPROC_DIR` names, which is then left in place).

        Raises:
            ImproperlyConfigured: prometheus_client is missing, or was imported before
                multiprocess mode could be turned on.
        """
        given = os.environ.get(MULTIPROCESS_ENV)
        if given:
            if not os.path.isdir(given):
                raise ImproperlyConfigured(f"{MULTIPROCESS_ENV}={given!r} is not a directory")
            metrics = cls(given, owned=False)
        else:
            if "prometheus_client.values" in sys.modules:
                raise ImproperlyConfigured(
                    "--metrics-port: prometheus_client was imported before the worker could "
                    f"turn on its multiprocess mode; set {MULTIPROCESS_ENV} to an empty "
                    "directory instead"
                )
            directory = tempfile.mkdtemp(prefix="celeriac-metrics-")
            os.environ[MULTIPROCESS_ENV] = directory
            metrics = cls(directory, owned=True)
            # Also when the app fails to load after this: forked children leave by
            # os._exit, so only this process runs it.
            atexit.register(metrics.close)
        try:
            require_client()
        except ImproperlyConfigured:
            metrics.close()
            raise
        return metrics

    def start(self, *, port: int, bind: str) -> None:
        """Count tasks from now on and serve `/metrics` on `bind`:`port` in a thread.

        Raises:
            ImproperlyConfigured: the address cannot be bound.
        """
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        self.task_metrics = TaskMetrics()
        self.task_metrics.connect()
        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        try:
            server, _ = start_http_server(port, addr=bind, registry=registry)
        except OSError as exc:
            raise ImproperlyConfigured(
                f"--metrics-port {port} --metrics-bind {bind}: cannot listen: {exc}"
            ) from exc
        self._server = server
        # A prefork child must not hold the listening socket: a child outliving its
        # supervisor would keep the port busy.
        os.register_at_fork(after_in_child=server.socket.close)
        host, bound_port = bind, server.server_address[1]
        # Printed like the banner: logging is configured only once the worker starts.
        print(
            f"Serving metrics on http://{host}:{bound_port}/metrics (values in {self.directory})",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        """Stop serving; remove the directory if it was made here."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)
            with contextlib.suppress(KeyError):
                if os.environ[MULTIPROCESS_ENV] == self.directory:
                    del os.environ[MULTIPROCESS_ENV]
