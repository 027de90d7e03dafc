"""The FastAPI recipe end to end: start a worker, call the endpoints through an ASGI
client (no server process needed), print the answers.

Run from this directory: `python run_example.py` (the queue is `broker.db` here).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


async def call_endpoints() -> None:
    import httpx
    from main import web

    transport = httpx.ASGITransport(app=web)
    async with httpx.AsyncClient(transport=transport, base_url="http://example") as client:
        print("GET /add?x=2&y=3 ->", (await client.get("/add?x=2&y=3")).json(), flush=True)
        print("GET /table?n=5 ->", (await client.get("/table?n=5")).json(), flush=True)


def main() -> int:
    os.chdir(HERE)
    for name in ("broker.db", "broker.db-wal", "broker.db-shm"):
        (HERE / name).unlink(missing_ok=True)
    print("$ celeriac -A main worker -l info", flush=True)
    worker = subprocess.Popen([sys.executable, "-m", "celeriac", "-A", "main", "worker"])
    try:
        sys.path.insert(0, str(HERE))
        asyncio.run(call_endpoints())
    finally:
        worker.send_signal(signal.SIGTERM)
        print("worker exited with code", worker.wait(timeout=60), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
