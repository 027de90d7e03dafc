"""The timed client loops every library's agent shares (S2 round trips, S3 chord).

Only the library calls differ between agents, so each passes them in: the loops, what
is timed and the checks are the same for every contestant. Imports nothing but the
standard library (it runs in every contestant's environment).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["round_trips", "timed_chord"]


def round_trips(echo: Callable[[int], Any], n: int, *, warmup: int) -> dict[str, Any]:
    """`warmup` untimed then `n` timed calls of `echo(i)` (send and wait for the result),
    each checked to return `i`; reports every round trip in `samples` (seconds)."""
    for i in range(warmup):
        assert echo(i) == i
    samples = []
    clock = time.perf_counter
    for i in range(n):
        began = clock()
        value = echo(i)
        samples.append(clock() - began)
        if value != i:
            raise RuntimeError(f"echo({i}) returned {value!r}")
    return {"samples": samples}


def timed_chord(
    header: Callable[[int], Any], run: Callable[[Any], Any], n: int, *, warmup: int
) -> dict[str, Any]:
    """A warm-up chord of `warmup` parts, then a timed one of `n`: `header(size)` builds
    the parts (untimed), `run(parts)` sends the chord and waits for the body's result,
    which must be the sum of `i + i`."""
    if warmup:
        assert run(header(warmup)) == sum(i + i for i in range(warmup))
    parts = header(n)
    began = time.perf_counter()
    value = run(parts)
    return {"seconds": time.perf_counter() - began, "result": value}
