"""The contestants: which brokers and scenarios each supports, and how its worker starts.

Every worker runs its library's own command line, from its own environment, with the
library's defaults except concurrency, pool, the queue and the prefetch window, which
is the same for all (4 messages per slot by default: Celery's and celeriac's default
`worker_prefetch_multiplier`; Dramatiq's own default is 2 per thread, and at one thread
per process its consumer then spends most of a drain in back-off sleeps):

- celeriac: `celeriac worker -P prefork -c N` (S1-S3), `-P asyncio -c SLOTS` (S4),
  `-P gevent -c SLOTS` (S4 sync);
- Celery: `celery worker -P prefork -c N` (S1-S3), `-P threads` and `-P gevent` with
  `-c SLOTS` (S4 and S4 sync, both measured, the better one compared);
- Dramatiq: `--processes N --threads 1` (S1-S3), `--processes 1 --threads SLOTS` (S4);
- Huey: `-k process -w N` (S1-S3), `-k thread -w SLOTS` (S4).

`celeriac+E` and `celery+E` are the same workers sending task events (`worker -E`), so
one invocation measures what events cost beside both libraries without them (they run
only when named with `-c`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.envs import Environment

__all__ = ["CONTESTANTS", "DEFAULT_CONTESTANTS", "Contestant", "URLs", "urls_for"]


@dataclass(frozen=True, slots=True)
class URLs:
    """Broker and result backend URLs of one run, as one contestant spells them."""

    broker: str
    backend: str


@dataclass(frozen=True, slots=True)
class Contestant:
    """One library under test."""

    name: str
    brokers: tuple[str, ...]
    #: S4 pools, best first by expectation; all are measured.
    io_pools: tuple[str, ...]
    #: S4 sync pools (plain task bodies); none: the variant is not written for it.
    sync_io_pools: tuple[str, ...] = ()
    #: Result backends it can use on RabbitMQ ("redis", and "rpc" for rpc://).
    amqp_results: tuple[str, ...] = ("redis",)
    has_bulk: bool = False
    has_chord: bool = False
    #: The library it runs (its environment and agent module); `name` unless a variant.
    variant_of: str = ""
    #: Its workers send task events (`worker -E`) whatever `--task-events` says.
    task_events: bool = False

    @property
    def library(self) -> str:
        return self.variant_of or self.name

    @property
    def module(self) -> str:
        return f"benchmarks.agents.{self.library}_app"

    def io_pools_for(self, broker: str, *, sync: bool = False) -> tuple[str, ...]:
        """S4 pools on `broker` (`sync`: S4 sync's)."""
        if self.library == "celery" and broker == "rabbitmq":
            # Celery's gevent pool on RabbitMQ settles at about 10 tasks/s here after the
            # first few hundred (kombu's pyamqp under gevent): a 10,000-task run would
            # take a quarter of an hour, so only threads by default (--celery-io-pool).
            return ("threads",)
        return self.sync_io_pools if sync else self.io_pools

    def cpu_pool(self) -> str:
        return {"celeriac": "prefork", "celery": "prefork", "dramatiq": "processes"}.get(
            self.library, "process"
        )

    def worker_command(
        self,
        env: Environment,
        *,
        queue: str,
        pool: str,
        concurrency: int,
        prefetch: int,
        task_events: bool = False,
    ) -> tuple[list[str], dict[str, str]]:
        """The command line (and extra environment) of a worker with `concurrency` slots
        in `pool`, fetching ahead `prefetch` messages per slot where the library can,
        sending task events if asked (celeriac and Celery only).

        Raises:
            ValueError: task events asked of a library that has none.
        """
        task_events = task_events or self.task_events
        if task_events and self.library not in ("celeriac", "celery"):
            raise ValueError(f"{self.name} has no task events: run it without --task-events")
        if self.library in ("celeriac", "celery"):
            command = [
                str(env.executable(self.library)),
                "-A",
                self.module,
                "worker",
                "-Q",
                queue,
                "-n",
                f"{queue}@%h",
                "-P",
                pool,
                "-c",
                str(concurrency),
                "-l",
                "WARNING",
                "--prefetch-multiplier",
                str(prefetch),
                *(["-E"] if task_events else []),
            ]
            return command, {}
        if self.library == "dramatiq":
            processes, threads = (concurrency, 1) if pool == "processes" else (1, concurrency)
            command = [
                str(env.executable("dramatiq")),
                self.module,
                "--processes",
                str(processes),
                "--threads",
                str(threads),
                "--queues",
                queue,
            ]
            # Dramatiq's window is per process: 2 x threads unless this variable says.
            return command, {"dramatiq_queue_prefetch": str(prefetch * threads)}
        # Huey's workers each pop one message at a time: no window to set.
        command = [
            str(env.executable("huey_consumer")),
            f"{self.module}.huey",
            "-w",
            str(concurrency),
            "-k",
            pool,
            "-q",
        ]
        return command, {}


CONTESTANTS: dict[str, Contestant] = {
    "celeriac": Contestant(
        "celeriac",
        brokers=("redis", "rabbitmq", "sqlite"),
        io_pools=("asyncio",),
        sync_io_pools=("gevent",),
        amqp_results=("redis", "rpc"),
        has_bulk=True,
        has_chord=True,
    ),
    "celery": Contestant(
        "celery",
        brokers=("redis", "rabbitmq"),
        io_pools=("gevent", "threads"),
        sync_io_pools=("gevent", "threads"),
        amqp_results=("redis", "rpc"),
        has_bulk=True,
        has_chord=True,
    ),
    "dramatiq": Contestant("dramatiq", brokers=("redis", "rabbitmq"), io_pools=("threads",)),
    "huey": Contestant("huey", brokers=("redis",), io_pools=("thread",)),
}
# What runs when no -c names anyone.
DEFAULT_CONTESTANTS: tuple[str, ...] = tuple(CONTESTANTS)
for _library in ("celeriac", "celery"):
    CONTESTANTS[f"{_library}+E"] = replace(
        CONTESTANTS[_library], name=f"{_library}+E", variant_of=_library, task_events=True
    )


def urls_for(
    contestant: Contestant,
    broker: str,
    results: str,
    *,
    redis_url: str,
    amqp_url: str,
    sqlite_path: str,
) -> URLs:
    """The URLs `contestant` gets for a run on `broker` with `results`."""
    if broker == "sqlite":
        url = f"sqlite:///{sqlite_path}"
        return URLs(url, url)
    backend = "rpc://" if results == "rpc" else redis_url
    if broker == "redis":
        return URLs(redis_url, backend)
    if contestant.library == "celery":
        # Celery compat: kombu's pure-Python AMQP transport, named explicitly.
        return URLs("py" + amqp_url, backend)
    if contestant.library == "dramatiq" and amqp_url.endswith("//"):
        # pika spells the default vhost "/" as %2F.
        return URLs(amqp_url[:-1] + "%2F", backend)
    return URLs(amqp_url, backend)
