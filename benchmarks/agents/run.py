"""`python -m benchmarks.agents.run LIBRARY COMMAND [--n N] ...`: one client action.

Runs inside LIBRARY's environment, performs one scenario's client side and prints one
JSON object on the last line of stdout. Timings are taken here, around the library
calls only: interpreter start, imports and the first connection are excluded (each
command warms its connection up first).

Commands (every app module implements the ones its library can do):

- `enqueue --n N [--bulk]`: publish one no-op (warm-up), then time N more, one `delay()`
  each, or as one bulk call (`--bulk`); reports `seconds`.
- `sleepers --n N --seconds S`: publish N tasks that sleep S seconds (S4); untimed.
- `sync-sleepers --n N --seconds S`: publish N sync tasks (S4 sync), every other one
  sleeping S seconds, the others reading from the slow server; untimed.
- `latency --n N --warmup W`: W untimed, then N timed `delay(i).get()` round trips;
  reports every round trip in `samples` (seconds).
- `chord --n N --warmup W`: a warm-up chord of W, then a timed chord of N `add(i, i)`
  with a `tsum` body; reports `seconds` and the body's `result`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

LIBRARIES = ("celeriac", "celery", "dramatiq", "huey")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.agents.run")
    parser.add_argument("library", choices=LIBRARIES)
    parser.add_argument(
        "command", choices=("enqueue", "sleepers", "sync-sleepers", "latency", "chord")
    )
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--bulk", action="store_true")
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    module: Any = importlib.import_module(f"benchmarks.agents.{args.library}_app")
    result: dict[str, Any]
    if args.command == "enqueue":
        result = module.enqueue(args.n, bulk=args.bulk)
    elif args.command == "sleepers":
        result = module.sleepers(args.n, args.seconds)
    elif args.command == "sync-sleepers":
        result = module.sync_sleepers(args.n, args.seconds)
    elif args.command == "latency":
        result = module.latency(args.n, warmup=args.warmup, timeout=args.timeout)
    else:
        result = module.fan_in(args.n, warmup=args.warmup, timeout=args.timeout)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
