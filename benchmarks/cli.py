"""The runner: `python -m benchmarks [options]` (see `--help` and benchmarks/README.md).

Order of work: check the environment (servers, load, Python), build the contestants'
environments, claim the benchmark's Redis database, then for each scenario and broker
do run 1 of every contestant, run 2 of every contestant, and so on (interleaved, so slow
drifts of the machine hit everyone alike), cleaning the servers after every run. The
JSON file is rewritten after every run, so an interrupted benchmark keeps what it
measured. Finally the table is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks import envs, machine, report
from benchmarks.contestants import CONTESTANTS, DEFAULT_CONTESTANTS, Contestant, urls_for
from benchmarks.scenarios import SCENARIOS, Counts, RunContext, run_scenario, s1_bulk
from benchmarks.servers import RabbitTarget, RedisTarget, reachable

__all__ = ["main"]

RESULTS_DIR = envs.REPO_ROOT / "benchmarks" / "results"
BROKERS = ("redis", "rabbitmq", "sqlite")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
# Environment variables that would redirect a contestant elsewhere: never passed on.
_SCRUBBED_PREFIXES = ("CELERY_", "CELERIAC_", "DRAMATIQ_", "dramatiq_", "HUEY_")
_SCRUBBED = {"PYTHONPATH", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONHOME"}
# --quick: counts for a smoke run of every scenario in a few minutes.
QUICK = Counts(s1_tasks=2_000, s2_calls=200, s3_size=100, s4_tasks=2_000)


def _csv(choices: tuple[str, ...]) -> Any:
    spelled = {choice.lower(): choice for choice in choices}

    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        bad = [item for item in items if item.lower() not in spelled]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(bad)} (choose from {', '.join(choices)})"
            )
        return [spelled[item.lower()] for item in items]

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="celeriac against stock Celery (and Dramatiq, Huey) on the same brokers.",
        epilog="Example: python -m benchmarks --scenario s2 --broker redis "
        "--contestant celeriac,celery --runs 3",
    )
    pick = parser.add_argument_group("what to run (comma-separated or repeated; default: all)")
    pick.add_argument("-s", "--scenario", action="append", type=_csv(SCENARIOS), default=[])
    pick.add_argument("-b", "--broker", action="append", type=_csv(BROKERS), default=[])
    pick.add_argument(
        "-c", "--contestant", action="append", type=_csv(tuple(CONTESTANTS)), default=[]
    )
    pick.add_argument("--runs", type=int, default=3, help="runs per figure (median; default 3)")
    pick.add_argument(
        "--concurrency", type=int, default=2, help="worker slots in S1-S3 (default 2)"
    )
    pick.add_argument(
        "--prefetch-multiplier",
        type=int,
        default=4,
        help="messages fetched ahead per slot, for every library that has the knob "
        "(default 4, Celery's default)",
    )
    pick.add_argument(
        "--celery-io-pool",
        type=_csv(("gevent", "threads")),
        default=None,
        help="Celery's S4 and S4 sync pools (default: gevent,threads on Redis, threads on "
        "RabbitMQ; the better one is compared)",
    )
    pick.add_argument(
        "-E",
        "--task-events",
        action="store_true",
        help="workers send task events (celeriac and Celery only: `worker -E`); "
        "-c celeriac+E,celery+E runs them with events beside the plain ones",
    )
    pick.add_argument("--no-bulk", action="store_true", help="skip S1's bulk enqueue variant")
    pick.add_argument("--no-rpc", action="store_true", help="skip S2's rpc:// variant on RabbitMQ")
    sizes = parser.add_argument_group("sizes")
    defaults = Counts()
    sizes.add_argument("--s1-tasks", type=int, default=None, help=f"({defaults.s1_tasks})")
    sizes.add_argument("--s2-calls", type=int, default=None, help=f"({defaults.s2_calls})")
    sizes.add_argument("--s2-warmup", type=int, default=None, help=f"({defaults.s2_warmup})")
    sizes.add_argument("--s3-size", type=int, default=None, help=f"({defaults.s3_size})")
    sizes.add_argument("--s4-tasks", type=int, default=None, help=f"({defaults.s4_tasks})")
    sizes.add_argument("--s4-slots", type=int, default=None, help=f"({defaults.s4_slots})")
    sizes.add_argument("--s4-sleep", type=float, default=None, help=f"({defaults.s4_sleep})")
    sizes.add_argument(
        "--quick",
        action="store_true",
        help="small counts (S1 2,000, S2 200, S3 100, S4 2,000) for a smoke run",
    )
    where = parser.add_argument_group("servers and environments")
    where.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help=f"an EMPTY Redis database the benchmark claims (default {DEFAULT_REDIS_URL})",
    )
    where.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    where.add_argument(
        "--python", default=sys.executable, help="interpreter for the contestants' envs"
    )
    where.add_argument("--reinstall", action="store_true", help="rebuild the environments")
    where.add_argument(
        "--setup-only", action="store_true", help="build the environments, then stop"
    )
    where.add_argument(
        "--timeout", type=float, default=600.0, help="limit per client action or drain (s)"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, default=None, help="JSON path (default: results/)")
    out.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    out.add_argument(
        "--report", type=Path, default=None, help="print the table of a saved JSON and stop"
    )
    return parser


def _flatten(groups: list[list[str]], default: tuple[str, ...]) -> list[str]:
    chosen = [item for group in groups for item in group]
    return list(dict.fromkeys(chosen)) if chosen else list(default)


def _counts(args: argparse.Namespace) -> Counts:
    base = QUICK if args.quick else Counts()
    values = {
        name: getattr(args, name)
        for name in ("s1_tasks", "s2_calls", "s2_warmup", "s3_size", "s4_tasks", "s4_slots")
        if getattr(args, name) is not None
    }
    if args.s4_sleep is not None:
        values["s4_sleep"] = args.s4_sleep
    return dataclasses.replace(base, **values)


def _unsupported(scenario: str, broker: str, results: str, contestant: Contestant) -> str | None:
    """Why `contestant` does not run this combination (None: it runs)."""
    if broker not in contestant.brokers:
        return "n/a (no such broker)" if broker != "sqlite" else "n/a"
    if broker == "rabbitmq" and results not in contestant.amqp_results:
        return "n/a"
    if scenario == "s3" and not contestant.has_chord:
        return "n/a (no chord)"
    if scenario == "s4sync" and not contestant.sync_io_pools:
        return "not written"
    return None


def _plan(
    scenarios: list[str], brokers: list[str], args: argparse.Namespace
) -> list[tuple[str, str, str]]:
    """(scenario, broker, results) in the order they run."""
    plan = []
    for scenario in scenarios:
        for broker in brokers:
            if broker == "sqlite":
                plan.append((scenario, broker, "sqlite"))
                continue
            plan.append((scenario, broker, "redis"))
            if scenario == "s2" and broker == "rabbitmq" and not args.no_rpc:
                plan.append((scenario, broker, "rpc"))
    return plan


def _base_env() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _SCRUBBED and not key.startswith(_SCRUBBED_PREFIXES)
    }
    env["PYTHONPATH"] = str(envs.REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.report is not None:
        return _print_saved(args.report, markdown=args.markdown)
    scenarios = _flatten(args.scenario, SCENARIOS)
    brokers = _flatten(args.broker, BROKERS)
    contestants = _flatten(args.contestant, DEFAULT_CONTESTANTS)
    counts = _counts(args)
    if args.runs < 1 or args.concurrency < 1:
        print("--runs and --concurrency must be at least 1", file=sys.stderr)
        return 2

    warnings: list[str] = []
    needs_redis = any(b in ("redis", "rabbitmq") for b in brokers)
    needs_amqp = "rabbitmq" in brokers
    if needs_redis and not reachable(args.redis_url, 6379):
        print(f"Redis is not reachable at {args.redis_url}", file=sys.stderr)
        return 69
    if needs_amqp and not reachable(args.amqp_url, 5672):
        print(f"RabbitMQ is not reachable at {args.amqp_url}", file=sys.stderr)
        return 69

    environments: dict[str, envs.Environment] = {}
    for library in dict.fromkeys(CONTESTANTS[name].library for name in contestants):
        environments[library] = envs.ensure(
            envs.spec_for(library), python=args.python, reinstall=args.reinstall
        )
    if args.setup_only:
        for env in environments.values():
            print(f"{env.name}: Python {env.python_version}, {env.versions}")
        return 0
    pythons = {env.python_version for env in environments.values()}
    if len(pythons) > 1:
        warnings.append(f"contestants run on different Pythons: {sorted(pythons)}")

    busy = machine.busy_warning()
    if busy:
        warnings.append(busy)
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)

    redis_target = RedisTarget(args.redis_url) if needs_redis else None
    rabbit_target = RabbitTarget(args.amqp_url) if needs_amqp else None
    servers: dict[str, str] = {}
    if redis_target is not None:
        servers["redis"] = redis_target.version()
        try:
            redis_target.claim()
        except RuntimeError as exc:
            print(str(exc), file=sys.stderr)
            return 75
    if rabbit_target is not None:
        servers["rabbitmq"] = rabbit_target.version()

    started = dt.datetime.now(dt.timezone.utc)
    output = args.output or RESULTS_DIR / f"{started:%Y%m%dT%H%M%SZ}.json"
    document: dict[str, Any] = {
        "schema": 1,
        "started_at": started.isoformat(),
        "command": ["python", "-m", "benchmarks", *(argv if argv is not None else sys.argv[1:])],
        "options": {
            "scenarios": scenarios,
            "brokers": brokers,
            "contestants": contestants,
            "runs": args.runs,
            "concurrency": args.concurrency,
            "prefetch_multiplier": args.prefetch_multiplier,
            "task_events": args.task_events,
            "counts": dataclasses.asdict(counts),
            "redis_url": args.redis_url,
            "amqp_url": _redact(args.amqp_url),
        },
        "machine": machine.describe(),
        "git": machine.git_state(envs.REPO_ROOT),
        "servers": servers,
        "environments": {
            name: {"python": env.python_version, "versions": env.versions}
            for name, env in environments.items()
        },
        "warnings": warnings,
        "unsupported": {},
        "runs": [],
    }
    records: list[dict[str, Any]] = document["runs"]
    unsupported: dict[str, str] = document["unsupported"]
    base_env = _base_env()
    try:
        for scenario, broker, results in _plan(scenarios, brokers, args):
            for run in range(1, args.runs + 1):
                for name in contestants:
                    contestant = CONTESTANTS[name]
                    why = _unsupported(scenario, broker, results, contestant)
                    if why:
                        unsupported[f"{scenario}/{broker}/{results}/{name}"] = why
                        continue
                    if scenario == "s1" and not contestant.has_bulk:
                        unsupported[f"s1/{broker}/{results}/{name}/enqueue_bulk"] = "n/a"
                    if scenario == "s1" and args.no_bulk:
                        unsupported[f"s1/{broker}/{results}/{name}/enqueue_bulk"] = "skipped"
                    pools: tuple[str, ...] = (contestant.cpu_pool(),)
                    if scenario in ("s4", "s4sync"):
                        pools = contestant.io_pools_for(broker, sync=scenario == "s4sync")
                        if contestant.library == "celery" and args.celery_io_pool:
                            pools = tuple(args.celery_io_pool)
                    for pool in pools:
                        record = _run_once(
                            scenario=scenario,
                            broker=broker,
                            results=results,
                            contestant=contestant,
                            env=environments[contestant.library],
                            pool=pool,
                            run=run,
                            args=args,
                            counts=counts,
                            base_env=base_env,
                            redis_target=redis_target,
                            rabbit_target=rabbit_target,
                        )
                        records.append(record)
                        _save(output, document)
    except KeyboardInterrupt:
        print("\ninterrupted: keeping the runs measured so far", file=sys.stderr)
        document["interrupted"] = True
    finally:
        if redis_target is not None:
            redis_target.release()
    document["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat()
    document["machine"]["load_average_at_end"] = machine.load_average()
    rows = report.summarize(records, contestants, unsupported)
    document["table"] = report.render(rows, contestants, markdown=True)
    _save(output, document)
    print()
    _print_header(document)
    print(report.render(rows, contestants, markdown=args.markdown))
    print(f"\nraw runs: {output}")
    return 1 if any(not r["ok"] for r in records) else 0


def _run_once(
    *,
    scenario: str,
    broker: str,
    results: str,
    contestant: Contestant,
    env: envs.Environment,
    pool: str,
    run: int,
    args: argparse.Namespace,
    counts: Counts,
    base_env: dict[str, str],
    redis_target: RedisTarget | None,
    rabbit_target: RabbitTarget | None,
) -> dict[str, Any]:
    queue = f"bench_{uuid.uuid4().hex[:10]}"
    workdir = Path(tempfile.mkdtemp(prefix="celeriac-bench-"))
    urls = urls_for(
        contestant,
        broker,
        results,
        redis_url=args.redis_url,
        amqp_url=args.amqp_url,
        sqlite_path=str(workdir / "bench.db"),
    )
    ctx = RunContext(
        contestant=contestant,
        env=env,
        broker=broker,
        results=results,
        urls=urls,
        queue=queue,
        workdir=workdir,
        concurrency=args.concurrency,
        counts=counts,
        timeout=args.timeout,
        base_env=base_env,
        prefetch_multiplier=args.prefetch_multiplier,
        task_events=args.task_events or contestant.task_events,
    )
    label = f"{scenario} {broker}{'+rpc' if results == 'rpc' else ''} {contestant.name}"
    if scenario in ("s4", "s4sync"):
        label += f" [{pool}]"
    record: dict[str, Any] = {
        "scenario": scenario,
        "broker": broker,
        "results": results,
        "contestant": contestant.name,
        "pool": pool,
        "concurrency": counts.s4_slots if scenario in ("s4", "s4sync") else args.concurrency,
        "run": run,
        "queue": queue,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "load_average": machine.load_average(),
        "ok": False,
        "metrics": {},
        "raw": ctx.raw,
    }
    began = time.monotonic()
    print(f"[{label} run {run}/{args.runs}] ", end="", flush=True)
    try:
        metrics = run_scenario(scenario, ctx, pool=pool)
        if scenario == "s1" and contestant.has_bulk and not args.no_bulk:
            metrics["enqueue_bulk"] = s1_bulk(ctx)
        record["metrics"] = metrics
        record["ok"] = True
    except Exception as exc:  # one failed run must not end the benchmark
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        record["seconds"] = round(time.monotonic() - began, 2)
        _cleanup(ctx, redis_target, rabbit_target)
        shutil.rmtree(workdir, ignore_errors=True)
    if record["ok"]:
        shown = ", ".join(f"{k} {v:,.2f}" for k, v in record["metrics"].items())
        print(f"{shown} ({record['seconds']:.0f} s)", flush=True)
    else:
        print(f"FAILED ({record['seconds']:.0f} s)\n  {record['error']}", flush=True)
    return record


def _cleanup(
    ctx: RunContext, redis_target: RedisTarget | None, rabbit_target: RabbitTarget | None
) -> None:
    """Leave the servers as the run found them."""
    if rabbit_target is not None and ctx.broker == "rabbitmq":
        q = ctx.queue
        rabbit_target.cleanup(
            queues=[q, f"{q}.dead", f"{q}.DQ", f"{q}.XQ"],
            exchanges=[q],
        )
    if redis_target is not None:
        ctx.raw["redis_keys_deleted"] = redis_target.wipe()


def _save(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=1, default=str))
    temporary.replace(path)


def _redact(url: str) -> str:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def _print_header(document: dict[str, Any]) -> None:
    m = document["machine"]
    options = document["options"]
    versions = "; ".join(
        f"{name} {info['versions'].get(name, '?')}"
        for name, info in document["environments"].items()
    )
    print(
        f"{m['cpu_model']}, {m['logical_cores']} cores, {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}; load {m['load_average']} -> {m.get('load_average_at_end')}"
    )
    servers = ", ".join(f"{k} {v}" for k, v in document["servers"].items())
    print(f"{servers}; {versions}")
    print(
        f"median of {options['runs']} run(s), concurrency {options['concurrency']}, "
        f"counts {options['counts']}"
    )
    for warning in document.get("warnings", []):
        print(f"WARNING: {warning}")
    print()


def _print_saved(path: Path, *, markdown: bool) -> int:
    document = json.loads(path.read_text())
    contestants = document["options"]["contestants"]
    rows = report.summarize(document["runs"], contestants, document.get("unsupported", {}))
    _print_header(document)
    print(report.render(rows, contestants, markdown=markdown))
    return 0
