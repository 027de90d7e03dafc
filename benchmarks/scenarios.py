"""The four scenarios, each run once for one contestant on one broker.

A run gets a fresh queue name and a fresh worker; its client actions run in the
contestant's environment (`benchmarks.agents.run`). Each returns its metrics (a flat
dict of floats) and the raw data behind them; the runner cleans the servers afterwards.

How each figure is measured:

- S1 enqueue: the client times its own loop of N `delay()` calls (after one untimed
  call that connects), with no worker running; `bulk`: the same N as one group.
- S1 drain: the N+1 queued no-ops are drained by a worker started afterwards. Each
  no-op updates its process's completion counters (`agents/recorder.py`): the rate is
  tasks / (last task's end - first task's start), so worker start-up is not counted.
- memory: the summed RSS of the worker's whole process tree, sampled every 50 ms from
  the worker's start to the end of the drain; its peak. (PSS is recorded as well.)
- S2: the client times each `delay(i).get()` after a warm-up; percentiles of those.
- S3: the client times `chord(header)(body).get()` for a chord of N, after a warm-up
  chord of 10; the body's result is checked.
- S4: N sleepers are queued, then a worker with SLOTS slots starts; the rate is N /
  (last task's end - first task's start), against the ideal SLOTS / sleep.
- S4 sync: as S4 with plain (sync) task bodies: every other task calls `time.sleep`, the
  others connect to a local TCP server (`agents/slow_server.py`, started for the run)
  that answers after the same delay and block in `recv` until it does. Also the CPU
  the worker's process tree spent per task (user + system), from the first task's end
  to the last: on a machine shared with other work the rate follows the CPU share the
  worker gets (500 threads are scheduled as 500 claimants, a gevent process as one), the
  CPU per task does not.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from benchmarks.agents.recorder import Counters
from benchmarks.agents.slow_server import SERVER_VARIABLE
from benchmarks.processes import MemorySampler, WorkerProcess, run_agent, tail, tree_cpu_seconds

if TYPE_CHECKING:
    from pathlib import Path

    from benchmarks.contestants import Contestant, URLs
    from benchmarks.envs import Environment

__all__ = ["SCENARIOS", "Counts", "RunContext", "ScenarioError", "percentile", "run_scenario"]

SCENARIOS = ("s1", "s2", "s3", "s4", "s4sync")
# How often the runner reads the completion counters while a worker drains.
POLL_INTERVAL = 0.01
# A drain that makes no progress for this long has failed.
STALL_TIMEOUT = 60.0
# Untimed chord before the timed one (S3).
CHORD_WARMUP = 10


class ScenarioError(RuntimeError):
    """A run failed; the message says where, with the worker's log tail if relevant."""


@dataclass(frozen=True, slots=True)
class Counts:
    """Task counts and sizes of the scenarios."""

    s1_tasks: int = 20_000
    s2_calls: int = 2_000
    s2_warmup: int = 50
    s3_size: int = 1_000
    s4_tasks: int = 10_000
    s4_slots: int = 500
    s4_sleep: float = 0.1


@dataclass
class RunContext:
    """Everything one run needs."""

    contestant: Contestant
    env: Environment
    broker: str
    results: str
    urls: URLs
    queue: str
    workdir: Path
    concurrency: int
    counts: Counts
    timeout: float
    base_env: dict[str, str]
    prefetch_multiplier: int = 4
    task_events: bool = False
    raw: dict[str, Any] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def process_env(self) -> dict[str, str]:
        return {
            **self.base_env,
            **self.extra_env,
            "BENCH_BROKER": self.urls.broker,
            "BENCH_BACKEND": self.urls.backend,
            "BENCH_QUEUE": self.queue,
            "BENCH_STATS_DIR": str(self.stats_dir),
        }

    @property
    def stats_dir(self) -> Path:
        path = self.workdir / "stats"
        path.mkdir(exist_ok=True)
        return path

    def agent(self, *args: str) -> dict[str, Any]:
        return run_agent(
            self.env.python,
            [self.contestant.library, *args],
            env=self.process_env,
            cwd=self.workdir,
            timeout=self.timeout,
        )

    def start_worker(self, pool: str, concurrency: int, label: str) -> WorkerProcess:
        command, extra_env = self.contestant.worker_command(
            self.env,
            queue=self.queue,
            pool=pool,
            concurrency=concurrency,
            prefetch=self.prefetch_multiplier,
            task_events=self.task_events,
        )
        self.raw.setdefault("worker_commands", []).append({"argv": command, "env": extra_env})
        return WorkerProcess(
            command,
            env={**self.process_env, **extra_env},
            cwd=self.workdir,
            log=self.workdir / f"{label}.log",
        )


def run_scenario(scenario: str, ctx: RunContext, *, pool: str | None = None) -> dict[str, float]:
    """Run `scenario` once; return its metrics."""
    if scenario == "s1":
        return _s1(ctx)
    if scenario == "s2":
        return _s2(ctx)
    if scenario == "s3":
        return _s3(ctx)
    if scenario == "s4":
        assert pool is not None
        return _s4(ctx, pool)
    if scenario == "s4sync":
        assert pool is not None
        return _s4_sync(ctx, pool)
    raise ValueError(f"unknown scenario {scenario!r}")


def _s1(ctx: RunContext) -> dict[str, float]:
    n = ctx.counts.s1_tasks
    answer = ctx.agent("enqueue", "--n", str(n))
    metrics = {"enqueue": n / answer["seconds"]}
    ctx.raw["enqueue_seconds"] = answer["seconds"]
    # The warm-up call queued one more no-op: N + 1 to drain.
    drained = _drain(ctx, ctx.contestant.cpu_pool(), ctx.concurrency, n + 1, memory=True, cpu=True)
    cpu_ms = drained.pop("cpu_ms_per_task", None)
    if cpu_ms is not None:
        # A no-op's CPU is a tenth of a millisecond: shown in microseconds.
        drained["cpu_us_per_task"] = cpu_ms * 1000
    metrics.update(drained)
    return metrics


def s1_bulk(ctx: RunContext) -> float:
    """The bulk variant of S1's enqueue (tasks/s); the queue is purged afterwards."""
    n = ctx.counts.s1_tasks
    answer = ctx.agent("enqueue", "--bulk", "--n", str(n))
    ctx.raw["enqueue_bulk_seconds"] = answer["seconds"]
    return float(n / answer["seconds"])


def _drain(
    ctx: RunContext, pool: str, slots: int, expected: int, *, memory: bool, cpu: bool = False
) -> dict[str, float]:
    """Start a worker on a full queue and wait until `expected` tasks have finished
    (`cpu`: also the worker's CPU per task from its first task on)."""
    worker = ctx.start_worker(pool, slots, label=f"worker-{pool}")
    sampler = MemorySampler(worker.pid) if memory else None
    counters = Counters(ctx.stats_dir)
    cpu_at: list[tuple[int, float]] = []
    try:
        if sampler is not None:
            sampler.start()
        done, first, last = _wait_for_count(
            ctx, worker, counters, expected, cpu_at=cpu_at if cpu else None
        )
        if cpu:
            cpu_at.append((done, tree_cpu_seconds(worker.pid)))
    finally:
        if sampler is not None:
            sampler.stop()
            worker.remember(sampler.seen)
        counters.close()
        code = worker.stop()
        ctx.raw.setdefault("worker_exit_codes", []).append(code)
    assert first is not None
    assert last is not None
    metrics = {"drain": done / (last - first)}
    ctx.raw["drain"] = {
        "finished": done,
        "seconds": last - first,
        "startup_seconds": first - worker.started_at,
    }
    if len(cpu_at) == 2 and cpu_at[1][0] > cpu_at[0][0]:
        (done_at_start, cpu_start), (done_at_end, cpu_end) = cpu_at
        metrics["cpu_ms_per_task"] = (cpu_end - cpu_start) * 1000 / (done_at_end - done_at_start)
        ctx.raw["cpu"] = {"samples": cpu_at}
    if sampler is not None:
        metrics["peak_rss_mib"] = sampler.peak_rss / 2**20
        metrics["peak_pss_mib"] = sampler.peak_pss / 2**20
        ctx.raw["memory"] = {
            "samples": sampler.samples,
            "peak_processes": sampler.peak_processes,
            "peak_rss_bytes": sampler.peak_rss,
            "peak_pss_bytes": sampler.peak_pss,
        }
    return metrics


def _wait_for_count(
    ctx: RunContext,
    worker: WorkerProcess,
    counters: Counters,
    expected: int,
    *,
    cpu_at: list[tuple[int, float]] | None = None,
) -> tuple[int, float | None, float | None]:
    """Wait for `expected` finished tasks; into `cpu_at`, the tasks finished and the
    worker's CPU seconds when the first one finished (start-up excluded)."""
    deadline = time.monotonic() + ctx.timeout
    progress_at = time.monotonic()
    seen = -1
    while True:
        done, first, last = counters.read()
        if cpu_at is not None and not cpu_at and done > 0:
            cpu_at.append((done, tree_cpu_seconds(worker.pid)))
        if done >= expected:
            return done, first, last
        now = time.monotonic()
        if done != seen:
            seen, progress_at = done, now
        if not worker.alive():
            raise ScenarioError(
                f"worker exited ({worker.process.returncode}) after {done}/{expected} tasks:\n"
                + tail(worker.log)
            )
        if now - progress_at > STALL_TIMEOUT or now > deadline:
            raise ScenarioError(f"worker stalled at {done}/{expected} tasks:\n" + tail(worker.log))
        time.sleep(POLL_INTERVAL)


def _with_worker(ctx: RunContext, *args: str) -> dict[str, Any]:
    """Run a client action against a freshly started worker."""
    worker = ctx.start_worker(ctx.contestant.cpu_pool(), ctx.concurrency, label="worker")
    try:
        return ctx.agent(*args)
    except RuntimeError as exc:
        raise ScenarioError(f"{exc}\nworker log:\n{tail(worker.log)}") from exc
    finally:
        ctx.raw.setdefault("worker_exit_codes", []).append(worker.stop())


def _s2(ctx: RunContext) -> dict[str, float]:
    answer = _with_worker(
        ctx,
        "latency",
        "--n",
        str(ctx.counts.s2_calls),
        "--warmup",
        str(ctx.counts.s2_warmup),
        "--timeout",
        "60",
    )
    samples = sorted(answer["samples"])
    ctx.raw["latency_samples"] = answer["samples"]
    return {
        "p50_ms": percentile(samples, 50) * 1000,
        "p95_ms": percentile(samples, 95) * 1000,
        "p99_ms": percentile(samples, 99) * 1000,
        "mean_ms": statistics.fmean(samples) * 1000,
    }


def percentile(ordered: list[float], percent: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not ordered:
        raise ScenarioError("no samples")
    position = (len(ordered) - 1) * percent / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _s3(ctx: RunContext) -> dict[str, float]:
    n = ctx.counts.s3_size
    answer = _with_worker(
        ctx, "chord", "--n", str(n), "--warmup", str(CHORD_WARMUP), "--timeout", str(ctx.timeout)
    )
    expected = n * (n - 1)
    if answer["result"] != expected:
        raise ScenarioError(f"chord body returned {answer['result']!r}, expected {expected}")
    ctx.raw["chord_seconds"] = answer["seconds"]
    return {"seconds": answer["seconds"]}


def _s4(ctx: RunContext, pool: str) -> dict[str, float]:
    counts = ctx.counts
    ctx.agent("sleepers", "--n", str(counts.s4_tasks), "--seconds", str(counts.s4_sleep))
    drained = _drain(ctx, pool, counts.s4_slots, counts.s4_tasks, memory=False)
    rate = drained["drain"]
    ideal = counts.s4_slots / counts.s4_sleep
    metrics = {"rate": rate, "ideal_fraction": rate / ideal}
    if "cpu_ms_per_task" in drained:
        metrics["cpu_ms_per_task"] = drained["cpu_ms_per_task"]
    return metrics


def _s4_sync(ctx: RunContext, pool: str) -> dict[str, float]:
    counts = ctx.counts
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.agents.slow_server", "--delay", str(counts.s4_sleep)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ctx.workdir,
        env=ctx.base_env,
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        if not port.isdigit():
            raise ScenarioError(f"the slow server did not start (said {port!r})")
        ctx.extra_env[SERVER_VARIABLE] = f"127.0.0.1:{port}"
        ctx.agent("sync-sleepers", "--n", str(counts.s4_tasks), "--seconds", str(counts.s4_sleep))
        drained = _drain(ctx, pool, counts.s4_slots, counts.s4_tasks, memory=False, cpu=True)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    rate = drained["drain"]
    ideal = counts.s4_slots / counts.s4_sleep
    metrics = {"rate": rate, "ideal_fraction": rate / ideal}
    if "cpu_ms_per_task" in drained:
        metrics["cpu_ms_per_task"] = drained["cpu_ms_per_task"]
    return metrics
