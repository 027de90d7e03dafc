"""The deployment recipes (examples/deploy, docs/deploy.md), tried for real where this
machine allows: systemd checks the units, the Kubernetes worker command runs and answers
its own liveness probe and stops warm on SIGTERM, the KEDA trigger's list holds what the
docs say on a real Redis, and Docker builds the image when a Docker daemon is reachable.

systemd-analyze and a Docker daemon are capabilities of the machine, not servers the
suite needs: without them those tests skip (with CI=true too), saying why."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from tests.deploy_recipes import DEPLOY, command_lines, manifests
from tests.helpers import require_programs, require_redis, unique, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration

# A prefork worker with 4 children took about 2 s to answer its first ping on this 2-core
# machine, and under a second to stop warm; the bounds are many times that.
READY_WITHIN = 60.0
STOPPED_WITHIN = 60.0


@pytest.mark.parametrize("name", ["celeriac-worker.service", "celeriac-beat.service"])
def test_systemd_accepts_the_unit(name: str, tmp_path: Path) -> None:
    require_programs("systemd-analyze")
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    text = (DEPLOY / "systemd" / name).read_text()
    # The unit names the project's virtualenv; point it at this one's `celeriac` so that
    # systemd can check the executable too.
    celeriac = os.path.join(os.path.dirname(sys.executable), "celeriac")
    (tmp_path / name).write_text(text.replace("/srv/proj/.venv/bin/celeriac", celeriac))
    run = subprocess.run(
        [analyze, "verify", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # systemd reports an unknown key or a bad value on stderr and still exits 0.
    problems = [line for line in run.stderr.splitlines() if name in line]
    assert run.returncode == 0, run.stderr
    assert not problems, run.stderr


def test_systemd_analyze_reports_a_bad_kill_mode(tmp_path: Path) -> None:
    """The check above can fail: a unit with a typo is reported."""
    require_programs("systemd-analyze")
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    text = (DEPLOY / "systemd" / "celeriac-worker.service").read_text()
    bad = tmp_path / "bad-worker.service"
    bad.write_text(text.replace("KillMode=mixed", "KillMode=gentle"))
    run = subprocess.run(
        [analyze, "verify", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "kill mode" in run.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the recipes' project, where its SQLite broker file goes too."""
    target = tmp_path / "srv"
    shutil.copytree(DEPLOY / "proj", target / "proj")
    return target


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def kubernetes_worker(project: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    """The worker container's command, run as Kubernetes would (POD_NAME set and
    substituted into `$(POD_NAME)`), on an SQLite broker of its own."""
    (line,) = [
        line for line in command_lines() if line.where == "kubernetes/worker.yaml worker command"
    ]
    environment = {
        **os.environ,
        # `celeriac` on the PATH, as in the image.
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "POD_NAME": unique("proj-worker"),
        "CELERIAC_BROKER_URL": f"sqlite:///{project / 'broker.db'}",
        "CELERIAC_RESULT_BACKEND": f"sqlite:///{project / 'broker.db'}",
        "PYTHONUNBUFFERED": "1",
    }
    argv = [argument.replace("$(POD_NAME)", environment["POD_NAME"]) for argument in line.argv]
    log = (project / "worker.log").open("wb")
    process = subprocess.Popen(
        argv,
        cwd=project,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        yield process, environment
    finally:
        stop(process)


def liveness_probe() -> list[str]:
    """The worker container's probe command, exactly as the manifest gives it."""
    (document,) = [
        document
        for _, document in manifests()
        if document["kind"] == "Deployment" and document["metadata"]["name"] == "proj-worker"
    ]
    (container,) = document["spec"]["template"]["spec"]["containers"]
    command: list[str] = container["livenessProbe"]["exec"]["command"]
    return command


def test_the_kubernetes_worker_answers_its_liveness_probe_and_stops_warm(
    kubernetes_worker: tuple[subprocess.Popen[bytes], dict[str, str]], project: Path
) -> None:
    process, environment = kubernetes_worker

    def probe_passes() -> bool:
        assert process.poll() is None, (project / "worker.log").read_text()
        # The probe's command, in a shell as the manifest runs it ($POD_NAME from the
        # environment, as in the pod).
        run = subprocess.run(
            liveness_probe(),
            cwd=project,
            env=environment,
            capture_output=True,
            timeout=60,
            check=False,
        )
        return run.returncode == 0

    wait_for(probe_passes, timeout=READY_WITHIN, interval=0.5, what="the liveness probe")
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=STOPPED_WITHIN) == 0
    log = (project / "worker.log").read_text()
    assert time.monotonic() - started < STOPPED_WITHIN, log


def test_a_probe_for_another_pod_fails(
    kubernetes_worker: tuple[subprocess.Popen[bytes], dict[str, str]], project: Path
) -> None:
    """The probe can fail: addressed to a node that is not there, it exits 69."""
    process, environment = kubernetes_worker
    wait_for(
        lambda: "ready" in (project / "worker.log").read_text() or process.poll() is not None,
        timeout=READY_WITHIN,
        what="worker start",
    )
    run = subprocess.run(
        liveness_probe(),
        cwd=project,
        env={**environment, "POD_NAME": "not-this-pod"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 69


@pytest.fixture
def keda_redis() -> Iterator[tuple[str, str]]:
    """The test Redis and a key prefix of this test's own (global_keyprefix), removed after."""
    import redis

    url = require_redis()
    prefix = unique("keda") + ":"
    yield url, prefix
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def test_the_keda_list_counts_ready_messages_and_due_etas_while_a_worker_runs(
    keda_redis: tuple[str, str],
) -> None:
    import redis

    from celeriac import Celeriac
    from celeriac.testing import start_worker

    url, prefix = keda_redis
    (scaled,) = [document for _, document in manifests() if document["kind"] == "ScaledObject"]
    queue = scaled["spec"]["triggers"][0]["metadata"]["listName"]
    options = {"global_keyprefix": prefix}
    app = Celeriac("proj", broker=url, backend=url, broker_transport_options=options)
    app.conf.task_default_queue = queue

    @app.task(name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    client = redis.Redis.from_url(url)
    listed = f"{prefix}{queue}"  # the trigger's listName, behind this test's prefix
    delayed = f"{prefix}_celeriac.delayed.{queue}"
    try:
        # With no live worker, an ETA message goes straight to the list, as kombu sends
        # it (broker_side_eta "auto"): counted at once, so KEDA scales up from nothing.
        add.apply_async((0, 0), countdown=3600)
        assert client.llen(listed) == 1
        client.delete(listed)
        # The worker KEDA keeps (minReplicaCount: 1); any worker on this Redis moves due
        # messages into their queue's list as it fetches, whichever queue it consumes
        # (here one that stays empty, so the list below is only counted, not consumed).
        with start_worker(app, queues=[unique("other")]):
            wait_for(lambda: client.zcard(f"{prefix}_celeriac.presence"), what="presence")
            add.delay(1, 1)
            assert client.llen(listed) == 1  # a ready message: counted
            add.apply_async((2, 2), countdown=3600)
            add.apply_async((3, 3), countdown=1)
            assert client.zcard(delayed) == 2  # waiting for their time: not counted
            assert client.llen(listed) == 1
            # The second one comes due and is counted from then on.
            wait_for(lambda: client.llen(listed) == 2, timeout=30, what="the due message")
            assert client.zcard(delayed) == 1  # the one due in an hour stays out
    finally:
        client.close()
        app.close()
