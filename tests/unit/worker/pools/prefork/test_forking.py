"""`fork_between_imports`: a child forked while another thread imports a module can import
it (a plain fork leaves the module's lock held by a thread the child does not have)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING

import pytest

from celeriac.worker.pools.prefork.forking import fork_between_imports, imports_in_flight
from tests.helpers import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

# Seconds the module's code takes to run: long enough to fork in the middle of it.
IMPORT_TAKES = 0.6
# Seconds a child gets to import the module and exit. It takes milliseconds when the lock
# is free (the module is already imported); a child on a held lock never exits.
CHILD_BUDGET = 10.0


@pytest.fixture
def slow_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The name of a fresh module whose import takes IMPORT_TAKES seconds."""
    name = f"slow_import_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(
        f"import time\ntime.sleep({IMPORT_TAKES})\nDONE = True\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def import_in_a_thread(name: str) -> threading.Thread:
    """Start importing `name` on another thread; return once it holds the module's lock."""
    thread = threading.Thread(target=__import__, args=(name,), daemon=True)
    thread.start()
    wait_for(lambda: name in imports_in_flight(), timeout=5, what="the import under way")
    return thread


def exit_code(pid: int, timeout: float) -> int | None:
    """The child's exit code, or None (and the child killed) if it is still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def fork_and_import(fork: Callable[[], int], name: str) -> int:
    pid = fork()
    if pid == 0:  # the child: import the module, say whether it ran whole
        code = 1
        try:
            module = __import__(name)
            code = 0 if getattr(module, "DONE", False) else 2
        finally:
            os._exit(code)
    return pid


def test_a_plain_fork_mid_import_leaves_the_child_stuck_on_that_import(slow_module: str) -> None:
    # The hazard itself, so the test below is known to reach it.
    thread = import_in_a_thread(slow_module)
    pid = fork_and_import(os.fork, slow_module)
    thread.join()
    assert exit_code(pid, timeout=IMPORT_TAKES * 3) is None


def test_a_fork_between_imports_waits_for_the_import_and_the_child_imports(
    slow_module: str,
) -> None:
    thread = import_in_a_thread(slow_module)
    pid = fork_and_import(fork_between_imports, slow_module)
    # The fork waited for the other thread's import to finish.
    assert slow_module in sys.modules
    assert slow_module not in imports_in_flight()
    thread.join()
    assert exit_code(pid, timeout=CHILD_BUDGET) == 0


def test_an_import_held_past_the_wait_is_logged_and_the_fork_goes_ahead(
    slow_module: str, caplog: pytest.LogCaptureFixture
) -> None:
    thread = import_in_a_thread(slow_module)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="celeriac.worker.pools.prefork.forking"):
        pid = fork_between_imports(wait=0.1)
        if pid == 0:
            os._exit(0)
    waited = time.monotonic() - started
    thread.join()
    assert exit_code(pid, timeout=CHILD_BUDGET) == 0
    # The fork went ahead before the import finished (0.10 s measured against the
    # import's 0.6 s).
    assert waited < IMPORT_TAKES
    assert [r.getMessage() for r in caplog.records if slow_module in r.getMessage()]


def test_nothing_is_in_flight_when_no_thread_imports() -> None:
    assert imports_in_flight() == []
