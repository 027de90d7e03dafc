"""A full disk under the SQLite broker: the worker reports it and survives (its children
do not crash-loop), and once space is freed every task runs.

The disk is a 3 MiB tmpfs mounted in a private user and mount namespace (`unshare -rm`,
no privileges needed), so the whole scenario runs in a script inside it: it starts a
real prefork worker on a file on that tmpfs, fills the tmpfs while 20 tasks wait for
their countdown, waits, frees the space, and prints what it saw as JSON.

Checks docs/reliability.md, "SQLite disk full".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

SCENARIO = r'''
import json, os, signal, subprocess, sys, time
from pathlib import Path

import psutil

here = Path(sys.argv[1])
mnt = here / "mnt"
mnt.mkdir()
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=True)
(here / "tasks.py").write_text(f"""
from celeriac import Celeriac
app = Celeriac("tasks", broker="sqlite:///{mnt}/celeriac.db")

@app.task
def echo(x):
    return x
""")
sys.path.insert(0, str(here))
log_path = here / "worker.log"
with open(log_path, "wb") as log:
    worker = subprocess.Popen(
        [sys.executable, "-m", "celeriac", "-A", "tasks", "worker", "-c", "2", "-l", "info"],
        cwd=here, stdout=log, stderr=log,
    )
seen = {}
try:
    import tasks

    def output():
        return log_path.read_text(errors="replace")

    def children():
        return sorted(p.pid for p in psutil.Process(worker.pid).children())

    deadline = time.monotonic() + 60
    while "ready" not in output() and time.monotonic() < deadline:
        time.sleep(0.2)
    seen["first"] = tasks.echo.delay(1).get(timeout=60)
    seen["children_before"] = children()
    waiting = [tasks.echo.apply_async((n,), countdown=2) for n in range(20)]
    filler = open(mnt / "filler", "wb")
    try:
        while True:
            filler.write(b"\0" * 4096)
            filler.flush()
    except OSError as exc:
        seen["filled"] = exc.errno
    deadline = time.monotonic() + 60
    while "is full" not in output() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # full for a while: a crash loop would show here
    seen["children_while_full"] = children()
    try:
        filler.close()
    except OSError:
        pass
    os.unlink(mnt / "filler")
    seen["waiting"] = sorted(r.get(timeout=120) for r in waiting)
    seen["after"] = tasks.echo.delay(99).get(timeout=60)
    seen["children_after"] = children()
    seen["alive"] = worker.poll() is None
finally:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(10)
    subprocess.run(["umount", "-l", str(mnt)])
    seen["log"] = log_path.read_text(errors="replace")
    print(json.dumps(seen))
'''


def namespaces_work(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    done = subprocess.run(
        ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
        capture_output=True,
        timeout=30,
    )
    return done.returncode == 0


def test_a_full_disk_is_reported_and_survived(tmp_path: Path) -> None:
    if not namespaces_work(tmp_path):
        if os.environ.get("CI") == "true":
            pytest.fail("unshare -rm with a tmpfs mount is needed for this test")
        pytest.skip("no unprivileged user and mount namespaces here")
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO)
    place = tmp_path / "place"
    place.mkdir()
    done = subprocess.run(
        ["unshare", "-rm", sys.executable, str(script), str(place)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    log = seen["log"]
    assert seen["first"] == 1
    assert seen["filled"] == 28  # ENOSPC: the disk really was full
    # Reported, in one line per process, with what to do.
    assert "is full (database or disk is full): free disk space" in log, log[-4000:]
    assert "Traceback" not in log, log[-3000:]
    # No crash loop: the same children throughout.
    assert seen["children_before"] == seen["children_while_full"] == seen["children_after"]
    # Nothing lost: every waiting task ran once space was back, and new ones run.
    assert seen["waiting"] == list(range(20))
    assert seen["after"] == 99
    assert seen["alive"]
