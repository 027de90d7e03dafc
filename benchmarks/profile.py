"""Where a celeriac task's time goes: profile one prefork child, split by step.

    python -m benchmarks.profile                 # S1 no-op drain on Redis
    python -m benchmarks.profile -s s2 -b redis  # echo round trips, results in Redis
    python -m benchmarks.profile -s s3           # chords of 1,000 adds, one after another
    python -m benchmarks.profile -b rabbitmq

Starts `celeriac worker -c 2` on the benchmark's app (`agents/celeriac_app.py`), feeds it
(S1: 60,000 queued no-ops; S2: `echo.delay(1).get()` in a loop; S3: S3's chord of 1,000
`add` parts and a `tsum` body, one after another), records one child
with py-spy (`--gil`, so samples are CPU, not waiting) and prints the share of samples in
each step of the consumer. S3 first counts the CPU each side spends per chord part (the
worker's children, the servers running on this machine, this client) for as long. Needs
py-spy (`pip install py-spy`; it reads another process's memory, so run as root or with
ptrace allowed) and the servers the benchmark uses; Redis database 15 is claimed as in
`python -m benchmarks`.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

from benchmarks.processes import cpu_seconds
from benchmarks.servers import RabbitTarget, RedisTarget

REDIS_URL = "redis://127.0.0.1:6379/15"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
# The steps of a consuming process, by the frame that marks them (first match wins).
STEPS = (
    ("fetch and ack (broker round trip)", "Consumer._receive"),
    ("prepare (decode, checks)", "Executor.prepare"),
    ("run (task body, limits, signals)", "Executor.run"),
    ("finish: store the result", "Settler._write"),
    ("finish: the rest (hooks, ack buffer)", "Settler.finish"),
)
LOOP = "consumer loop (window, dispatch)"


def split(raw: Path) -> tuple[int, collections.Counter[str]]:
    """Samples of the consuming thread in py-spy's raw output, counted per step."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if "Consumer.run" not in stack:
            continue  # the lease keeper's thread, start-up
        samples = int(number)
        total += samples
        step = next((label for label, marker in STEPS if marker in stack), LOOP)
        counts[step] += samples
    return total, counts


class CpuPerPart:
    """CPU seconds of each side over a span of S3's chords, per chord part."""

    def __init__(self, worker: psutil.Process, servers: tuple[str, ...]) -> None:
        self.sides = {
            "worker children": worker.children(),
            f"{', '.join(servers)} (on this machine)": [
                p for p in psutil.process_iter(["name"]) if p.info["name"] in servers
            ],
            "this client": [psutil.Process()],
        }
        self.start = self._sample()

    def _sample(self) -> dict[str, float]:
        return {side: sum(map(cpu_seconds, ps)) for side, ps in self.sides.items()}

    def report(self, parts: int, seconds: float) -> list[str]:
        end = self._sample()
        if not parts:
            return [f"no chord completed in {seconds:.1f} s"]
        lines = [f"CPU per chord part over {parts:,} parts ({1e6 * seconds / parts:.0f} us wall):"]
        for side, before in self.start.items():
            lines.append(f"  {1e6 * (end[side] - before) / parts:5.0f} us  {side}")
        return lines


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("-s", "--scenario", choices=("s1", "s2", "s3"), default="s1")
    parser.add_argument("-b", "--broker", choices=("redis", "rabbitmq"), default="redis")
    parser.add_argument("--seconds", type=int, default=3, help="how long to record")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw stacks here")
    options = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        parser.error("py-spy is not installed: pip install py-spy")
    target = RedisTarget(REDIS_URL)
    target.claim()
    queue = f"profile-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "BENCH_BROKER": REDIS_URL if options.broker == "redis" else AMQP_URL,
        "BENCH_BACKEND": REDIS_URL,
        "BENCH_QUEUE": queue,
    }
    os.environ.update(env)
    from benchmarks.agents.celeriac_app import add, app, echo, noop, tsum
    from celeriac import chord

    worker: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    parts: list[int] = []  # S3: parts of each chord completed
    per_part: list[str] = []
    try:
        if options.scenario == "s1":
            with app.producer_batch():
                for _ in range(60_000):
                    noop.delay()
        command = [sys.executable, "-m", "celeriac", "-A", "benchmarks.agents.celeriac_app"]
        command += ["worker", "-c", "2", "-Q", queue, "-l", "warning"]
        worker = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        time.sleep(2.5)  # start-up, and the drain under way
        if options.scenario == "s2":

            def round_trips() -> None:
                while not stop.is_set():
                    echo.delay(1).get(timeout=10)

            threading.Thread(target=round_trips, daemon=True).start()
        elif options.scenario == "s3":

            def chords() -> None:
                while not stop.is_set():
                    header = [add.s(i, i) for i in range(1_000)]
                    chord(header)(tsum.s()).get(timeout=30)
                    parts.append(len(header))

            threading.Thread(target=chords, daemon=True).start()
        child = psutil.Process(worker.pid).children()[0].pid
        if options.scenario == "s3":
            # Counted before py-spy attaches: its sampling costs the child CPU too.
            servers = (
                ("redis-server",) if options.broker == "redis" else ("redis-server", "beam.smp")
            )
            accounting = CpuPerPart(psutil.Process(worker.pid), servers)
            counted, began = len(parts), time.perf_counter()
            time.sleep(options.seconds)
            per_part = accounting.report(sum(parts[counted:]), time.perf_counter() - began)
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "profile.txt"
            record = [spy, "record", "-p", str(child), "-d", str(options.seconds)]
            record += ["-r", "1000", "--gil", "-f", "raw", "-o", str(raw)]
            subprocess.run(record, check=True, capture_output=True)
            total, counts = split(raw)
            if options.raw is not None:
                shutil.copyfile(raw, options.raw)
    finally:
        stop.set()
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        app.close()
        target.wipe()
        target.release()
        if options.broker == "rabbitmq":
            RabbitTarget(AMQP_URL).cleanup([queue, f"{queue}.dead"], [])
    print(f"{options.scenario} on {options.broker}: {total} samples of one child")
    for label, samples in counts.most_common():
        print(f"  {100 * samples / max(total, 1):5.1f} %  {label}")
    print("\n".join(per_part))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
