"""A hundred blocking HTTP calls at once, on one gevent worker process.

Run from this directory (`pip install "celeriac[gevent]"`). Starts a local HTTP server
that answers each request after half a second, then `celeriac -A tasks worker -P gevent
-c 100` on the embedded SQLite broker, and sends 100 `fetch` tasks: one after another
they would take 50 s; on 100 greenlets they take about one. Finally a warm shutdown
(SIGTERM): the worker finishes what runs and exits 0.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DELAY = 0.5
CALLS = 100


class SlowHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(DELAY)
        body = b"hello from a slow server\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class SlowServer(http.server.ThreadingHTTPServer):
    request_queue_size = 256  # a hundred connections arrive at once
    daemon_threads = True


def main() -> int:
    for name in ("celeriac.db", "celeriac.db-wal", "celeriac.db-shm"):
        (HERE / name).unlink(missing_ok=True)
    server = SlowServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    sys.path.insert(0, str(HERE))
    os.chdir(HERE)
    from tasks import fetch

    print("$ celeriac -A tasks worker -P gevent -c 100", flush=True)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celeriac", "-A", "tasks", "worker", "-P", "gevent", "-c", "100"],
        cwd=HERE,
        stderr=subprocess.DEVNULL,
    )
    try:
        fetch.delay(url).get(timeout=60)  # the worker is up
        began = time.monotonic()
        results = [fetch.delay(url) for _ in range(CALLS)]
        answers = [r.get(timeout=120) for r in results]
        elapsed = time.monotonic() - began
        pids = {a["pid"] for a in answers}
        print(
            f"{CALLS} calls of {DELAY} s each: {elapsed:.1f} s "
            f"({CALLS * DELAY:.0f} s one after another), in {len(pids)} worker process",
            flush=True,
        )
        print("SIGTERM: warm shutdown", flush=True)
        worker.send_signal(signal.SIGTERM)
        print(f"worker exited with {worker.wait(timeout=60)}", flush=True)
        return 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
