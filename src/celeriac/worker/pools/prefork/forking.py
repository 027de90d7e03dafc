"""Fork a child only when no other thread is half-way through an import.

A thread that imports a module holds that module's import lock until the module's code
has run. `fork()` copies the lock as held but not the thread, and CPython re-creates only
its global import lock in the child: the child's first import of that module then waits
forever. The supervisor forks (a respawn, `pool_grow`, autoscaling) while its own threads
(revocations, errands, backlog) may be importing for the first time; redis-py, for one,
imports the `email` package through `importlib.metadata` on its first connection.

`fork_between_imports` holds the global import lock, under which no thread can take a
module lock, and forks once no other thread holds one. A module lock held longer than
`IMPORT_WAIT` (an import blocked on the network) is logged and the fork goes ahead.

The module locks are read from `importlib._bootstrap._module_locks`, the same registry on
Python 3.10 to 3.13; where it is missing, the fork goes ahead at once.
"""

from __future__ import annotations

import _imp
import logging
import os
import threading
import time
from importlib import _bootstrap

logger = logging.getLogger(__name__)

# Seconds to wait for other threads' imports to finish before forking anyway. An import
# takes milliseconds; a thread still in one after this is blocked, and waiting longer
# would hold back respawns.
IMPORT_WAIT = 2.0
# Seconds between looks while an import is in flight.
IMPORT_POLL = 0.002


def imports_in_flight() -> list[str]:
    """Names of the modules whose import lock another thread holds now."""
    locks = getattr(_bootstrap, "_module_locks", None)
    if not isinstance(locks, dict):
        return []
    me = threading.get_ident()
    held = []
    for name, ref in list(locks.items()):
        lock = ref() if callable(ref) else None
        owner = getattr(lock, "owner", None)
        if owner is not None and owner != me:
            held.append(name)
    return held


def fork_between_imports(wait: float = IMPORT_WAIT) -> int:
    """`os.fork()` at a moment when no other thread holds a module's import lock."""
    deadline = time.monotonic() + wait
    while True:
        _imp.acquire_lock()
        try:
            busy = imports_in_flight()
            if not busy or time.monotonic() >= deadline:
                if busy:
                    logger.warning(
                        "Forking while another thread has been importing %s for %.0f s; "
                        "the child may hang on its first import of it",
                        ", ".join(sorted(busy)),
                        wait,
                    )
                # In the child, the fork leaves this thread holding the import lock at
                # the same depth, so the release below balances it on both sides.
                return os.fork()
        finally:
            _imp.release_lock()
        time.sleep(IMPORT_POLL)
