"""The prefork pool: a supervisor process keeping one consuming child per slot.

`supervisor.py` spawns, watches and replaces the children; `child.py` is what runs
inside each of them (a complete consumer of its own); `autoscale.py` decides how many
there are; `held.py` is how children tell the supervisor what they hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from celeriac.worker.pools.base import Pool, PoolStats
from celeriac.worker.pools.prefork.supervisor import Supervisor

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.worker.options import WorkerOptions
    from celeriac.worker.pools.prefork.autoscale import PoolSize

__all__ = ["PreforkPool"]


class PreforkPool(Pool):
    """A supervisor process keeping one consuming child per slot."""

    name: ClassVar[str] = "prefork"

    def __init__(self, app: Celeriac, options: WorkerOptions) -> None:
        super().__init__(app, options)
        self.supervisor = Supervisor(app, options)

    def run(self) -> int:
        return self.supervisor.run()

    def stats(self) -> PoolStats:
        supervisor = self.supervisor
        return PoolStats(self.name, supervisor.size.wanted(), tuple(supervisor.processes()))

    def pool_size(self) -> PoolSize:
        return self.supervisor.size

    def active_requests(self) -> list[dict[str, Any]]:
        return self.supervisor.requests()[0]

    def reserved_requests(self) -> list[dict[str, Any]]:
        return self.supervisor.requests()[1]

    def processed_count(self) -> int:
        return self.supervisor.slots.done()

    def request_shutdown(self) -> None:
        self.supervisor.shutdown.warm.set()

    def forward_control(self, method: str, arguments: dict[str, Any]) -> None:
        self.supervisor.forward_control(method, arguments)
