"""systemd's readiness protocol: tell the service manager the worker is up, or stopping.

A unit with `Type=notify` waits for `READY=1` before it counts the worker as started
(and before units ordered after it start); `STOPPING=1` says a shutdown has begun. The
protocol is one datagram per state on the unix socket named by `$NOTIFY_SOCKET` (a path,
or an abstract socket when it starts with `@`). Without that variable (not run by systemd,
or not `Type=notify`) every call here does nothing. libsystemd is not needed for this.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify"]

logger = logging.getLogger(__name__)

# The environment variable systemd sets for a `Type=notify` service.
NOTIFY_SOCKET = "NOTIFY_SOCKET"


def notify(*states: str) -> bool:
    """Send `states` (such as `"READY=1"`) to systemd; return whether one was sent.

    A failure to send is logged, not raised: the worker runs whether or not systemd
    hears it (systemd then reports the start as timed out, which names the problem).
    """
    address = os.environ.get(NOTIFY_SOCKET)
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    payload = "\n".join(states).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(payload)
    except OSError as exc:
        logger.warning("cannot notify systemd at %s: %s", os.environ[NOTIFY_SOCKET], exc)
        return False
    return True
