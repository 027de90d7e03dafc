"""Celery's worker options on a real `celeriac worker` (docs/worker.md, "The command
line"): daemonizing (`-D`, `--pidfile`, `--logfile` expansions, `--uid`, `--workdir`),
queues (`-X`, `--purge`), the accepted no-ops, and the one-line refusals.

Every worker is a real process, stopped by the test by its pid (a detached one by the pid
its pid file names); files live in the test's temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from celeriac.cli import EX_CANTCREAT, EX_USAGE
from tests.helpers import require_redis, unique, wait_for
from tests.integration.conftest import import_tasks, wait_until_gone, write_tasks
from tests.integration.worker_tasks import SOURCE, events

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.integration.conftest import RunWorker

pytestmark = pytest.mark.integration

# A worker on SQLite was ready 1.3 s after the command started on this 2-core machine
# (detached: the command returned after 1.3 s); bounds are 15x that.
START_WITHIN = 20.0


@pytest.fixture
def app_dir(tasks_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The worker tests' `tasks.py` on a SQLite broker in the test's directory."""
    for variable in (
        "TEST_BROKER_URL",
        "TEST_BACKEND_URL",
        "TEST_KEY_PREFIX",
        "TEST_QUEUE",
        "TEST_DEAD_LETTER_QUEUE",
        "CELERIAC_BROKER_URL",
        "CELERY_BROKER_URL",
    ):
        monkeypatch.delenv(variable, raising=False)
    write_tasks(tasks_dir, SOURCE)
    return tasks_dir


def celeriac(
    directory: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `celeriac ARGS` to its end (a detached worker's command returns at ready)."""
    return subprocess.run(
        [sys.executable, "-m", "celeriac", *args],
        cwd=directory,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        timeout=90,
        check=False,
    )


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


def stop(pid: int) -> None:
    """Stop a worker we did not start as a child (detached) and its children, by pid."""
    try:
        children = [kid.pid for kid in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_until_gone([pid, *children], timeout=20):
        for victim in (pid, *children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)


@pytest.fixture
def detached(app_dir: Path) -> Iterator[list[Path]]:
    """Pid files of detached workers; each worker named in one is stopped at teardown."""
    pidfiles: list[Path] = []
    yield pidfiles
    for path in pidfiles:
        with contextlib.suppress(OSError, ValueError):
            stop(read_pid(path))


# -- -D and --pidfile ----------------------------------------------------------------------


def test_detach_returns_at_ready_and_the_pid_file_names_the_daemon(
    app_dir: Path, detached: list[Path]
) -> None:
    pidfile = app_dir / "worker.pid"
    detached.append(pidfile)
    started = time.monotonic()
    done = celeriac(app_dir, "-A", "tasks", "worker", "-D", "--pidfile", str(pidfile), "-c", "1")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < START_WITHIN
    pid = read_pid(pidfile)
    assert psutil.Process(pid).ppid() != os.getpid()
    assert os.getsid(pid) != os.getsid(0)  # a session of its own: no controlling terminal
    tasks = import_tasks(app_dir)
    try:
        assert tasks.where.delay().get(timeout=30)["ppid"] == pid
    finally:
        tasks.app.close()
    stop(pid)
    wait_for(lambda: not pidfile.exists(), timeout=10, what="pid file removed at exit")


def test_a_second_worker_on_a_locked_pid_file_refuses_to_start(
    app_dir: Path, detached: list[Path]
) -> None:
    pidfile = app_dir / "worker.pid"
    detached.append(pidfile)
    first = celeriac(app_dir, "-A", "tasks", "worker", "-D", "--pidfile", str(pidfile), "-c", "1")
    assert first.returncode == 0, first.stderr
    pid = read_pid(pidfile)
    second = celeriac(app_dir, "-A", "tasks", "worker", "-D", "--pidfile", str(pidfile), "-c", "1")
    assert second.returncode == EX_CANTCREAT, second.stderr
    assert second.stderr.strip().splitlines()[-1] == (
        f"Error: pid file {pidfile} is locked by a running worker (pid {pid}): stop that "
        "worker first, or give this one another --pidfile"
    )
    assert read_pid(pidfile) == pid
    assert psutil.pid_exists(pid)


def test_a_stale_pid_file_is_detected_and_replaced(app_dir: Path, run_worker: RunWorker) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    pidfile = app_dir / "worker.pid"
    pidfile.write_text(f"{gone.pid}\n")
    worker = run_worker("-P", "solo", "--pidfile", str(pidfile))
    assert read_pid(pidfile) == worker.pid
    assert f"Replacing the stale pid file {pidfile} (pid {gone.pid} is gone)" in worker.output()


# -- --logfile expansions ------------------------------------------------------------------


def test_prefork_children_log_to_their_own_expanded_file(
    app_dir: Path, run_worker: RunWorker
) -> None:
    worker = run_worker(
        "-c", "2", "-O", "fair", "-n", "alpha@example.com", "-f", "%n%I-%h.log", wait=False
    )
    supervisor = app_dir / "alpha-example.com.log"
    wait_for(
        lambda: supervisor.exists() and "ready" in supervisor.read_text(),
        timeout=START_WITHIN,
        what="the supervisor's log says ready",
    )
    tasks = import_tasks(app_dir)
    try:
        # -O fair: each child holds one message, so two long tasks run on both children.
        results = [tasks.sleeper.delay(1.0, key) for key in ("a", "b")]
        assert [r.get(timeout=30) for r in results] == ["a", "b"]
    finally:
        tasks.app.close()
    children = set(worker.children())
    ran_on = {e["pid"] for e in events(app_dir) if e["event"] == "start"}
    assert len(ran_on) == 2
    assert ran_on <= children
    for index in (1, 2):
        own = app_dir / f"alpha-{index}-example.com.log"
        lines = own.read_text().splitlines()
        assert lines, f"{own.name} is empty"
        assert all(f"ForkPoolWorker-{index} " in line for line in lines), lines
    assert "ForkPoolWorker" not in supervisor.read_text()
    assert "celeriac worker alpha@example.com ready" in supervisor.read_text()


# -- --uid, --workdir ----------------------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory anyone may write (the worker runs as nobody there)."""
    path = Path(tempfile.mkdtemp(prefix="celeriac-uid-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _python_for(user: str) -> tuple[str, dict[str, str]]:
    """An interpreter `user` can run, with celeriac and its dependencies on the path.

    The test's own interpreter may live where only root reads (a home directory); the
    system Python of the same version then runs the same installed packages."""
    import site
    import sysconfig

    import celeriac

    package = Path(celeriac.__path__[0]).resolve()
    paths = [str(package.parent)]
    paths += [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    probe = subprocess.run(
        ["su", "-s", "/bin/sh", user, "-c", f"{sys.executable} -c pass"],
        capture_output=True,
        check=False,
    )
    python = sys.executable
    if probe.returncode != 0:
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        python = shutil.which(version, path="/usr/bin:/usr/local/bin") or ""
        if not python:
            pytest.fail(f"no {version} that {user} can run: {probe.stderr!r}")
    return python, {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def test_uid_drops_the_worker_to_nobody(shared_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root")
    write_tasks(shared_dir, SOURCE)
    python, env = _python_for("nobody")
    pidfile = shared_dir / "worker.pid"
    log = shared_dir / "worker.log"
    process = subprocess.Popen(
        [python, "-m", "celeriac", "-A", "tasks", "worker", "-P", "solo", "-l", "info",
         "--uid", "nobody", "--pidfile", str(pidfile), "-f", str(log)],
        cwd=shared_dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )  # fmt: skip
    try:
        wait_for(
            lambda: (log.exists() and "ready" in log.read_text()) or process.poll() is not None,
            timeout=START_WITHIN,
            what="worker ready",
        )
        assert process.poll() is None, log.read_text() if log.exists() else "no log"
        status = Path(f"/proc/{process.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uids.split()[1:] == ["65534"] * 4
        assert os.stat(pidfile).st_uid == 65534
        assert "superuser privileges" not in log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_a_worker_run_as_root_warns_as_celery_does(app_dir: Path, run_worker: RunWorker) -> None:
    if os.geteuid() != 0:
        pytest.skip("the warning is for root")
    worker = run_worker("-P", "solo")
    assert "You're running the worker with superuser privileges" in worker.output()
    assert "--uid option" in worker.output()


@contextlib.contextmanager
def started(directory: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`celeriac ARGS` run in `directory` until ready; stopped by pid afterwards."""
    log = directory / f"{unique('worker')}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "celeriac", *args],
            cwd=directory,
            stdout=handle,
            stderr=handle,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        wait_for(
            lambda: "ready" in log.read_text() or process.poll() is not None,
            timeout=START_WITHIN,
            what="worker ready",
        )
        assert process.poll() is None, log.read_text()
        yield process, log
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.parametrize("where", ["global", "worker"])
def test_workdir_finds_the_app_in_that_directory(app_dir: Path, tmp_path: Path, where: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    worker = ["worker", "-P", "solo", "-l", "info"]
    if where == "global":
        args = ["--workdir", str(app_dir), "-A", "tasks", *worker]
    else:
        args = ["-A", "tasks", *worker, "--workdir", str(app_dir)]
    with started(elsewhere, *args) as (process, _):
        assert psutil.Process(process.pid).cwd() == str(app_dir)


def test_umask_applies_to_the_files_the_worker_creates(app_dir: Path) -> None:
    pidfile = app_dir / "umask.pid"
    args = ["-A", "tasks", "worker", "-P", "solo", "-l", "info", "--umask", "077"]
    with started(app_dir, *args, "--pidfile", str(pidfile)):
        assert pidfile.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("where", ["global", "worker"])
def test_the_broker_option_overrides_the_apps(app_dir: Path, where: str) -> None:
    url = f"sqlite:///{app_dir / 'other.db'}"
    worker = ["worker", "-P", "solo", "-l", "info"]
    if where == "global":
        args = ["-b", url, "-A", "tasks", *worker]
    else:
        args = ["-A", "tasks", *worker, "-b", url]
    with started(app_dir, *args) as (_, log):
        assert f"broker:       {url}\n" in log.read_text()


# -- queues: -X and --purge ----------------------------------------------------------------


def test_exclude_queues_leaves_those_queues_alone(app_dir: Path, run_worker: RunWorker) -> None:
    worker = run_worker("-P", "solo", "-Q", "keep,skip", "-X", "skip")
    assert "queues:       keep\n" in worker.output()
    tasks = import_tasks(app_dir)
    try:
        skipped = tasks.where.apply_async(queue="skip")
        kept = tasks.where.apply_async(queue="keep")
        assert kept.get(timeout=30)["pid"] == worker.pid
        assert skipped.state == "PENDING"
        assert tasks.app.broker.size("skip") == 1
    finally:
        tasks.app.close()


def test_purge_erases_the_waiting_messages_before_starting(
    app_dir: Path, run_worker: RunWorker
) -> None:
    tasks = import_tasks(app_dir)
    try:
        for key in ("a", "b", "c"):
            tasks.sleeper.delay(0, key)
        worker = run_worker("-P", "solo", "--purge")
        assert "purge: Erased 3 messages from the queue." in worker.output()
        assert tasks.where.delay().get(timeout=30)["pid"] == worker.pid
    finally:
        tasks.app.close()
    assert [e for e in events(app_dir) if e["event"] == "start"] == []


# -- accepted no-ops, heartbeats, refusals -------------------------------------------------


def test_without_gossip_and_mingle_are_accepted_with_one_info_line_each(
    app_dir: Path, run_worker: RunWorker
) -> None:
    worker = run_worker("-P", "solo", "--without-gossip", "--without-mingle")
    output = worker.output()
    assert output.count("--without-gossip: celeriac workers do not gossip") == 1
    assert output.count("--without-mingle: celeriac workers do not mingle at start") == 1


def _worker_events(directory: Path, node: str, seconds: float) -> list[str]:
    """The worker event types `node` sends within `seconds` (`celeriac events --dump`)."""
    dump = subprocess.run(
        [sys.executable, "-m", "celeriac", "-A", "tasks", "events", "--dump", "--json",
         "--timeout", str(seconds)],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )  # fmt: skip
    found = [json.loads(line) for line in dump.stdout.splitlines() if line.strip()]
    return [e["type"] for e in found if e.get("hostname") == node]


@pytest.mark.redis
@pytest.mark.parametrize("without", [True, False])
def test_without_heartbeat_sends_no_worker_heartbeat_events(
    app_dir: Path, run_worker: RunWorker, monkeypatch: pytest.MonkeyPatch, without: bool
) -> None:
    name = unique("hb")
    monkeypatch.setenv("TEST_BROKER_URL", require_redis())
    monkeypatch.setenv("TEST_KEY_PREFIX", f"{name}:")
    monkeypatch.setenv("TEST_QUEUE", name)
    node = f"{name}@test"
    flags = ["--without-heartbeat"] if without else []
    run_worker("-P", "solo", "-n", node, "--heartbeat-interval", "0.5", *flags)
    seen = _worker_events(app_dir, node, 4.0)
    if without:
        assert "worker-heartbeat" not in seen
    else:
        # 4 s at one every 0.5 s: at least 3 on a loaded machine.
        assert seen.count("worker-heartbeat") >= 3, seen


def test_an_unsupported_celery_option_is_refused_in_one_line(app_dir: Path) -> None:
    done = celeriac(app_dir, "-A", "tasks", "worker", "--statedb", "/tmp/state")
    assert done.returncode == EX_USAGE
    assert done.stderr.splitlines() == [
        "Error: --statedb is a Celery option celeriac worker does not support: revoked "
        "task ids are kept on the broker, shared by every worker: drop --statedb"
    ]


def test_a_misspelt_option_gets_did_you_mean(app_dir: Path) -> None:
    done = celeriac(app_dir, "-A", "tasks", "worker", "--pidfle", "w.pid")
    assert done.returncode == EX_USAGE
    assert done.stderr.splitlines() == [
        "Error: no such option for celeriac worker: --pidfle (did you mean --pidfile?); "
        "see celeriac worker --help"
    ]
