"""A celeriac and a stock Celery 5.7 project sharing one broker, for the operations tests.

`fleet` (Redis or RabbitMQ) writes `cproj.py` (celeriac) and `stockproj.py` (Celery) with
the same tasks, queue, result backend (Redis, one key prefix) and their own
`control_exchange`/`event_exchange` names, so commands other tests broadcast on the same
server never reach these workers. `tasks.py` re-exports `cproj` for `run_worker`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from tests.helpers import require_rabbitmq, require_redis, unique

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = ["Fleet", "fleet"]

TASKS = """
@app.task(name="rc.add")
def add(x, y):
    return x + y


@app.task(name="rc.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="rc.nap")
def nap(seconds, tag):
    # Leaves a mark when it starts: a revoked task must never leave one.
    (HERE / f"started-{tag}").write_text(IMPL)
    time.sleep(seconds)
    return tag
"""

HEADER = """
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMPL = {impl!r}
"""

CELERIAC_APP = """
from celeriac import Celeriac

app = Celeriac(
    "rc",
    broker={broker!r},
    backend={backend!r},
    task_default_queue={queue!r},
    broker_transport_options={celeriac_options!r},
    result_backend_transport_options={{"global_keyprefix": {prefix!r}}},
    control_exchange={ns!r},
    event_exchange={ev!r},
)
"""

CELERY_APP = """
import celery

app = celery.Celery("rc", broker={broker!r}, backend={backend!r}, set_as_current=False)
app.conf.update(
    task_default_queue={queue!r},
    broker_transport_options={options!r},
    result_backend_transport_options={{"global_keyprefix": {prefix!r}}},
    control_exchange={ns!r},
    event_exchange={ev!r},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
"""


@dataclass(frozen=True)
class Fleet:
    kind: str
    directory: Path
    broker: str
    prefix: str
    queue: str
    ns: str

    def run(
        self, program: str, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `celery -A stockproj ...` or `celeriac -A cproj ...` to its end."""
        module = "stockproj" if program == "celery" else "cproj"
        environment = {**os.environ, "PYTHONPATH": str(self.directory)}
        return subprocess.run(
            [sys.executable, "-m", program, "-A", module, *args],
            cwd=self.directory,
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def started(self, tag: str) -> bool:
        return (self.directory / f"started-{tag}").exists()


@pytest.fixture(params=["redis", "amqp"])
def fleet(request: pytest.FixtureRequest, tasks_dir: Path) -> Iterator[Fleet]:
    kind: str = request.param
    backend = require_redis()
    broker = require_rabbitmq() if kind == "amqp" else backend
    if kind == "amqp":
        request.applymarker(pytest.mark.rabbitmq)
    name = unique("rc")
    prefix = f"{name}:"
    options = {"global_keyprefix": prefix} if kind == "redis" else {}
    values = {
        "broker": broker,
        "backend": backend,
        "queue": name,
        "options": options,
        # ETA messages go straight to the queue, where a stock worker finds them.
        "celeriac_options": {**options, "broker_side_eta": False} if options else {},
        "prefix": prefix,
        "ns": f"{name}.ctl",
        "ev": f"{name}.ev",
    }
    for module, template, impl in (
        ("cproj", CELERIAC_APP, "celeriac"),
        ("stockproj", CELERY_APP, "celery"),
    ):
        source = (
            textwrap.dedent(HEADER.format(impl=impl))
            + textwrap.dedent(template.format(**values))
            + textwrap.dedent(TASKS)
        )
        (tasks_dir / f"{module}.py").write_text(source)
    # run_worker starts `celeriac -A tasks worker`.
    (tasks_dir / "tasks.py").write_text("from cproj import *  # noqa: F403\n")
    yield Fleet(kind, tasks_dir, broker, prefix, name, f"{name}.ctl")
    # Imported here: conftest imports this module, and that test module imports conftest.
    from tests.integration.test_amqp_worker import delete_amqp, delete_redis_keys

    delete_redis_keys(backend, prefix)
    if kind == "amqp":
        delete_amqp(
            broker,
            [name],
            [f"{name}.ctl.pidbox", f"reply.{name}.ctl.pidbox", f"{name}.ev"],
        )
