"""Starting and stopping contestant processes, and watching their memory and CPU.

Every process the runner starts is stopped by pid: a worker gets SIGTERM (each library's
warm shutdown), then, past a grace period, SIGKILL; any process of its tree still alive
afterwards (every pid the memory sampler or the stop saw) is killed by its own pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

__all__ = [
    "AgentError",
    "MemorySampler",
    "WorkerProcess",
    "cpu_seconds",
    "run_agent",
    "tail",
    "tree_cpu_seconds",
]

# How often the memory sampler looks at the worker's process tree.
SAMPLE_INTERVAL = 0.05
# How long a worker gets to shut down warmly before it is killed.
STOP_GRACE = 15.0


def cpu_seconds(process: psutil.Process) -> float:
    """User plus system CPU `process` has used so far."""
    times = process.cpu_times()
    return float(times.user + times.system)


def tree_cpu_seconds(pid: int) -> float:
    """User plus system CPU of process `pid` and its live descendants so far."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in tree:
        try:
            total += cpu_seconds(process)
        except psutil.Error:
            continue
    return total


class AgentError(RuntimeError):
    """A client action failed; the message carries its output's tail."""


def tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def run_agent(
    python: Path,
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float,
) -> dict[str, Any]:
    """Run `python -m benchmarks.agents.run ARGS` and return its JSON answer."""
    command = [str(python), "-m", "benchmarks.agents.run", *args]
    try:
        done = subprocess.run(
            command, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        # subprocess.run kills the child (by its pid) before raising.
        raise AgentError(f"{' '.join(args)} did not finish within {timeout:.0f} s") from exc
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        output = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
        raise AgentError(f"{' '.join(args)} failed (exit {done.returncode}):\n{output}")
    answer: dict[str, Any] = json.loads(lines[-1])
    return answer


@dataclass
class MemorySampler:
    """Samples the summed RSS (and PSS) of a process and all its descendants."""

    root: int
    interval: float = SAMPLE_INTERVAL
    peak_rss: int = 0
    peak_pss: int = 0
    peak_processes: int = 0
    samples: int = 0
    seen: dict[int, psutil.Process] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        try:
            root = psutil.Process(self.root)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss = pss = 0
        for process in tree:
            try:
                rss += process.memory_info().rss
                pss += _pss(process.pid)
            except psutil.Error:
                continue
            self.seen.setdefault(process.pid, process)
        self.samples += 1
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_processes = max(self.peak_processes, len(tree))


def _pss(pid: int) -> int:
    """Proportional set size in bytes from /proc (0 where the kernel lacks it)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class WorkerProcess:
    """One contestant worker, started in its own session, stopped by pid."""

    def __init__(
        self, command: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path
    ) -> None:
        self.command = list(command)
        self.log = log
        self._log_handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.process.pid
        self.started_at = time.time()
        # Every process of the tree seen so far (psutil checks a pid's creation time
        # before signalling it, so a recycled pid is never hit).
        self.known: dict[int, psutil.Process] = {}

    def alive(self) -> bool:
        return self.process.poll() is None

    def remember(self, processes: Mapping[int, psutil.Process] | None = None) -> None:
        """Add these processes, and the tree's current descendants, to the known set."""
        if processes:
            for pid, process in processes.items():
                self.known.setdefault(pid, process)
        try:
            for child in psutil.Process(self.pid).children(recursive=True):
                self.known.setdefault(child.pid, child)
        except psutil.Error:
            pass

    def stop(self, *, grace: float = STOP_GRACE) -> int | None:
        """Warm shutdown (SIGTERM), then SIGKILL; then kill any straggler by its pid."""
        self.remember()
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.remember()
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        code = self.process.returncode
        # Children normally exit with their parent; give them a moment, then kill the rest.
        leftovers = [p for pid, p in self.known.items() if pid != self.pid]
        _gone, alive = psutil.wait_procs(leftovers, timeout=5.0)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=5.0)
        self._log_handle.close()
        return code
