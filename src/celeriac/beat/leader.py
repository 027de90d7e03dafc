"""The leader lease: of any number of beat processes on one schedule, exactly one sends.

Each process calls `step()` in its loop. The holder renews its lease every third of
`lease_seconds`; the others sleep until the lease would lapse and then try to take it,
so when the leader dies a follower leads within `lease_seconds` of the leader's last
renewal (plus the follower's reaction time). A new holder gets a higher fencing token,
and the store refuses claims made with an older one: a leader that stalled past its
lease (a long pause, a network partition) cannot claim a tick after it was replaced.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from celeriac.beat.store import ScheduleStore

__all__ = ["Leadership"]

logger = logging.getLogger("celeriac.beat")

# A follower retries a little after the lease it saw should have lapsed.
_TAKEOVER_SLACK = 0.05


@final
class Leadership:
    """This process's side of the lease.

    Args:
        store: Where the lease lives.
        owner: This process's unique name.
        lease_seconds: How long a lease lasts without renewal.
    """

    def __init__(self, store: ScheduleStore, owner: str, *, lease_seconds: float) -> None:
        self.store = store
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.token = 0
        self.holder: str | None = None

    @property
    def is_leader(self) -> bool:
        return self.token > 0

    def step(self) -> float:
        """Take or renew the lease; return the seconds until `step` is due again."""
        lease = self.store.acquire(self.owner, seconds=self.lease_seconds)
        self.holder = lease.holder
        if lease.held_by(self.owner):
            if lease.token != self.token:
                logger.info(
                    "beat %s leads schedule %s (fencing token %d)",
                    self.owner,
                    self.store.name,
                    lease.token,
                )
            self.token = lease.token
            return self.lease_seconds / 3
        if self.token:
            logger.warning("beat %s lost the lease to %s", self.owner, lease.holder)
        self.token = 0
        return min(max(lease.remaining, 0.0), self.lease_seconds) + _TAKEOVER_SLACK

    def lost(self) -> None:
        """The store refused this process's token: it no longer leads."""
        if self.token:
            logger.warning("beat %s was replaced as leader", self.owner)
        self.token = 0

    def resign(self) -> None:
        """Release the lease (clean shutdown) so a follower leads at once."""
        if self.token:
            self.store.release(self.owner)
            logger.info("beat %s released the lease", self.owner)
        self.token = 0
