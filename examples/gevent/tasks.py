"""Tasks of the gevent walkthrough: plain `def` tasks doing blocking HTTP calls.

Nothing here knows about gevent: `celeriac -A tasks worker -P gevent` patches the
standard library before this module is imported, so `urllib` waits cooperatively and a
hundred of these calls run at once in one process.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from celeriac import Celeriac

HERE = Path(__file__).resolve().parent

app = Celeriac("tasks", broker=f"sqlite:///{HERE / 'celeriac.db'}")


@app.task
def fetch(url: str) -> dict[str, object]:
    """GET `url` with the standard library; say what came back and who ran it."""
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    return {"status": response.status, "bytes": len(body), "pid": os.getpid()}
