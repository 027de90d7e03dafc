"""Publish tokens: a publish retried after a lost reply lands once.

A publish whose reply is lost (the connection drops after the server ran the command)
is retried by `call_with_retry`; without a guard the message would be pushed twice.
Every producing thread has a token key of its own (`_celeriac.publish.<producer>`, a
random name made once per thread and process) holding the token of its last publish:

- the one-message hot path sends the LPUSH and `SET <token key> <token>` in one write,
  in that order (no MULTI, no script: they cost 3.7 us of CPU per publish where a Lua
  script cost 10.7 us); the server runs the commands of one connection in order, so a
  token that landed means its push landed before it;
- a MULTI publish (several messages, an ETA message) writes the token inside the MULTI.

Only a retry pays more: it first reads the key and sends nothing when it holds this
publish's token. A thread publishes one message (or batch) at a time and only it writes
its key, so the key holding the token means exactly "the earlier attempt ran". The one
gap, on the hot path: a server that ran the push and then stalled for longer than the
socket timeout before reading the SET (which arrived in the same write) can lose the SET
with the connection; the retry then pushes again, as every publish did before. It never
loses a message: the token is only ever behind its push.

The key lives `TOKEN_TTL` seconds after the thread's last publish, longer than any retry
loop (about 65 s with the default socket timeouts and retry policy): one small key per
producing thread, never one per message.
"""

from __future__ import annotations

import itertools
import os
import threading
import uuid
from typing import Final, final

__all__ = ["TOKEN_PREFIX", "TOKEN_TTL", "PublishTokens"]

# The token key of one producing thread: `<global_keyprefix>_celeriac.publish.<producer>`.
TOKEN_PREFIX: Final = "_celeriac.publish."
# Seconds the token key outlives its thread's last publish (longer than a retry loop).
TOKEN_TTL: Final = 300


@final
class PublishTokens:
    """Hands out (token key, token) pairs, one key per thread and process.

    Args:
        prefix: The broker's `global_keyprefix`.
    """

    __slots__ = ("_local", "_prefix")

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix + TOKEN_PREFIX
        self._local = threading.local()

    def next(self) -> tuple[str, str]:
        """This thread's token key and a token it has not used before."""
        local = self._local
        pid = os.getpid()
        if getattr(local, "pid", None) != pid:
            # A forked child must not share its parent's key (their counters would meet).
            local.pid = pid
            local.key = self._prefix + uuid.uuid4().hex
            local.counter = itertools.count(1)
        return local.key, str(next(local.counter))
