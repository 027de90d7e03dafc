"""`celeriac worker -P gevent`: patch the standard library before anything imports it.

gevent's monkey-patching must come before `socket`, `threading`, `ssl` and the rest are
imported, or locks and sockets made earlier stay blocking and can freeze every greenlet
(Celery patches first thing in its `__main__` for the same reason). The package's
`__init__` calls `patch_for_command_line()` as its first statement; it does anything only
in the `celeriac` command itself (console script or `python -m celeriac`) when the
command line names the gevent pool. This module imports nothing but `os` and `sys`.
"""

from __future__ import annotations

import os
import sys

__all__ = ["patch_for_command_line", "pool_on_command_line"]


def pool_on_command_line(args: list[str]) -> str | None:
    """The pool a `celeriac ... worker ...` command line names, if any.

    Understands `-P NAME`, `-PNAME`, `--pool NAME` and `--pool=NAME`.
    """
    if "worker" not in args:
        return None
    for index, arg in enumerate(args):
        if arg in ("-P", "--pool"):
            return args[index + 1] if index + 1 < len(args) else None
        if arg.startswith("--pool="):
            return arg[len("--pool=") :]
        if arg.startswith("-P") and len(arg) > 2:
            return arg[2:]
    return None


def _is_celeriac_command(argv: list[str]) -> bool:
    if argv and os.path.basename(argv[0]) == "celeriac":
        return True
    # `python -m celeriac`: while the package is imported, argv[0] is still "-m".
    original = list(getattr(sys, "orig_argv", ()))
    return any(
        original[index] == "-m" and original[index + 1] == "celeriac"
        for index in range(len(original) - 1)
    )


def patch_for_command_line() -> bool:
    """Monkey-patch with gevent if this process is `celeriac worker -P gevent`.

    Returns whether it patched. Without gevent installed it does nothing: the pool then
    refuses to start, naming the extra to install.
    """
    argv = list(sys.argv)
    if not _is_celeriac_command(argv) or pool_on_command_line(argv[1:]) != "gevent":
        return False
    try:
        from gevent import monkey
    except ImportError:
        return False
    monkey.patch_all()
    return True
