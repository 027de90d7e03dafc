"""Benchmarks: celeriac against stock Celery (and Dramatiq, Huey) on the same broker.

Run `python -m benchmarks --help` (or `make bench`). The runner (this package, less
`agents/`) creates one virtual environment per contestant under `benchmarks/.envs/`,
starts each contestant's worker and client there as separate processes, measures them
from outside, prints a table of ratios against Celery and writes every raw run to
`benchmarks/results/<timestamp>.json`. `agents/` holds the code that runs inside the
contestants' environments; the runner never imports it.

Importing this package has no side effects and needs only the standard library, because
the agents (run as `python -m benchmarks.agents.run` inside each environment) import it too.
"""
