"""Load the dashboard as a big fleet would, and measure how fast it answers.

    python -m benchmarks.dashboard_load                  # 50 workers, 1,000 task events/s, 30 s
    python -m benchmarks.dashboard_load --workers 100 --rate 2000 --seconds 60 --json out.json

A private Redis server is started on a free loopback port (or `--redis-url` names one: it
must be a database nothing else listens to, since the events go to every receiver on
it) and a real dashboard (`celeriac -A loadapp dashboard`) runs as a subprocess. Then,
for `--seconds`:

- `--workers` simulated workers keep presence records in the broker (a heartbeat each
  every `HEARTBEAT_INTERVAL`, as a worker's consumer does) and send `worker-heartbeat`
  events every 2 s;
- task events go out at `--rate` per second (task-sent, -received, -started and
  -succeeded for each simulated task, spread over the workers), in `task.multi` batches
  every 0.1 s as workers send them;
- every page is fetched in turn (page latency), and the live stream is read, each
  update's delay measured as its arrival time minus the `timestamp` of the newest event
  it reports (SSE latency, which includes the stream's 0.5 s update interval).

It prints the percentiles, the events the dashboard folded against those sent, and the
dashboard's CPU use. Everything started is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil

# Seconds between two simulated workers' heartbeat events (a worker's default `freq`).
EVENT_HEARTBEAT = 2.0
# Seconds between two batches of task events (a worker's flush interval).
FLUSH_INTERVAL = 0.1
# Pages fetched in turn while the load runs.
PAGES = ("/workers", "/queues", "/tasks", "/dead-letters", "/charts")

APP_MODULE = """
from celeriac import Celeriac

app = Celeriac("loadapp", broker={url!r}, backend={url!r}, task_default_queue="load")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {seconds:g}s")


def _percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(at(0.95) * 1000, 1),
        "p99_ms": round(at(0.99) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


class Load:
    """The simulated fleet: presence heartbeats and events."""

    def __init__(self, app: Any, *, workers: int, rate: int) -> None:
        from celeriac.worker.presence import HEARTBEAT_INTERVAL

        self.app = app
        self.rate = rate
        self.heartbeat_interval = HEARTBEAT_INTERVAL
        self.names = [f"sim{i:03d}@loadhost" for i in range(workers)]
        self.brokers = [
            app.create_broker(consumer_id=f"{name}:{10_000 + i}")
            for i, name in enumerate(self.names)
        ]
        self.stop = threading.Event()
        self.sent_events = 0
        self.presence_beats = 0
        self.task_ids: list[str] = []

    def presence(self) -> None:
        registered = False
        while not self.stop.is_set():
            started = time.monotonic()
            for i, broker in enumerate(self.brokers):
                identity = {
                    "worker": self.names[i],
                    "host": "loadhost",
                    "pid": 10_000 + i,
                    "pool": "prefork",
                    "concurrency": 8,
                    "started": time.time(),
                }
                broker.heartbeat(identity, held=i % 5, running=[], register=not registered)
                self.presence_beats += 1
            registered = True
            self.stop.wait(max(0.0, self.heartbeat_interval - (time.monotonic() - started)))

    def events(self) -> None:
        from celeriac.brokers.mailbox import pack

        mailbox = self.app.control.mailbox()
        per_batch = max(4, int(self.rate * FLUSH_INTERVAL) // 4 * 4)
        next_beat = 0.0
        next_batch = time.monotonic()
        kinds = ("task-sent", "task-received", "task-started", "task-succeeded")
        while not self.stop.is_set():
            now = time.time()
            if time.monotonic() >= next_beat:
                for name in self.names:
                    beat = {
                        "type": "worker-heartbeat",
                        "hostname": name,
                        "timestamp": now,
                        "freq": EVENT_HEARTBEAT,
                        "active": 3,
                        "processed": self.sent_events // 4,
                        "loadavg": [0.5, 0.4, 0.3],
                    }
                    mailbox.publish_event("worker.heartbeat", pack(beat, headers={}))
                next_beat = time.monotonic() + EVENT_HEARTBEAT
            batch = []
            for _ in range(per_batch // 4):
                task_id = str(uuid.uuid4())
                worker = self.names[len(self.task_ids) % len(self.names)]
                self.task_ids.append(task_id)
                for kind in kinds:
                    event: dict[str, Any] = {
                        "type": kind,
                        "uuid": task_id,
                        "hostname": worker,
                        "timestamp": time.time(),
                    }
                    if kind == "task-sent":
                        event.update(name="loadapp.work", queue="load", args="(1, 2)")
                    if kind == "task-succeeded":
                        event.update(result="3", runtime=0.004)
                    batch.append(event)
            mailbox.publish_event("task.multi", pack(batch, headers={}))
            self.sent_events += len(batch)
            if len(self.task_ids) > 100_000:
                del self.task_ids[:50_000]
            next_batch += FLUSH_INTERVAL
            self.stop.wait(max(0.0, next_batch - time.monotonic()))

    def close(self) -> None:
        for broker in self.brokers:
            try:
                broker.withdraw()
            finally:
                broker.close()


def _read_stream(
    url: str, stop: threading.Event, delays: list[float], last: dict[str, Any]
) -> None:
    with httpx.Client(timeout=None) as client, client.stream("GET", f"{url}/stream") as reply:
        kind = ""
        for line in reply.iter_lines():
            if stop.is_set():
                return
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "update":
                data = json.loads(line[6:])
                if data.get("latest"):
                    delays.append(time.time() - float(data["latest"]))
                last.update(data)


def run(arguments: argparse.Namespace) -> dict[str, Any]:
    from celeriac import Celeriac

    cleanup: list[Any] = []
    workdir = Path(tempfile.mkdtemp(prefix="dashboard-load-"))
    try:
        url = arguments.redis_url
        if not url:
            if shutil.which("redis-server") is None:
                raise SystemExit("redis-server is not installed: pass --redis-url")
            port = _free_port()
            server = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(workdir),
                ],
                stdout=subprocess.DEVNULL,
            )
            cleanup.append(server)
            _wait_port(port, 10)
            url = f"redis://127.0.0.1:{port}/0"
        (workdir / "loadapp.py").write_text(APP_MODULE.format(url=url))
        app = Celeriac("loadapp", broker=url, backend=url, task_default_queue="load")
        web_port = _free_port()
        dashboard = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celeriac",
                "-A",
                "loadapp",
                "dashboard",
                "--port",
                str(web_port),
                "--no-enable-events",
            ],
            cwd=workdir,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        cleanup.append(dashboard)
        _wait_port(web_port, 30)
        web = f"http://127.0.0.1:{web_port}"
        load = Load(app, workers=arguments.workers, rate=arguments.rate)
        threads = [
            threading.Thread(target=load.presence, daemon=True),
            threading.Thread(target=load.events, daemon=True),
        ]
        delays: list[float] = []
        last: dict[str, Any] = {}
        stream_stop = threading.Event()
        threads.append(
            threading.Thread(
                target=_read_stream, args=(web, stream_stop, delays, last), daemon=True
            )
        )
        for thread in threads:
            thread.start()
        time.sleep(arguments.warmup)
        delays.clear()
        sent_before = load.sent_events
        events_before = int(last.get("events", 0))
        watched = psutil.Process(dashboard.pid)
        watched.cpu_percent()
        pages: dict[str, list[float]] = {page: [] for page in (*PAGES, "/tasks/<id>")}
        deadline = time.monotonic() + arguments.seconds
        shown = 0
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < deadline:
                for page in PAGES:
                    started = time.perf_counter()
                    reply = client.get(web + page)
                    pages[page].append(time.perf_counter() - started)
                    reply.raise_for_status()
                    if page == "/workers":
                        shown = reply.text.count('<tr class="state-online')
                if load.task_ids:
                    started = time.perf_counter()
                    recent = load.task_ids[-min(len(load.task_ids), 1000)]
                    client.get(f"{web}/tasks/{recent}").raise_for_status()
                    pages["/tasks/<id>"].append(time.perf_counter() - started)
        cpu = watched.cpu_percent()
        sent = load.sent_events - sent_before
        folded = int(last.get("events", 0)) - events_before
        load.stop.set()
        stream_stop.set()
        for thread in threads[:2]:
            thread.join(timeout=10)
        load.close()
        app.close()
        return {
            "workers": arguments.workers,
            "rate_asked": arguments.rate,
            "seconds": arguments.seconds,
            "task_events_sent_per_s": round(sent / arguments.seconds),
            "events_folded_per_s": round(folded / arguments.seconds),
            "presence_heartbeats": load.presence_beats,
            "workers_shown_online": shown,
            "dashboard_cpu_percent": round(cpu, 1),
            "sse_latency": _percentiles(delays),
            "pages": {page: _percentiles(samples) for page, samples in pages.items()},
        }
    finally:
        for process in reversed(cleanup):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--rate", type=int, default=1000, help="Task events per second.")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--redis-url", default="", help="Default: a private redis-server.")
    parser.add_argument("--json", default="", help="Also write the results here.")
    arguments = parser.parse_args(argv)
    results = run(arguments)
    print(json.dumps(results, indent=2))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
