"""The last resort for a delivery whose handling raised: requeue it, a few times only.

Admission turns whatever a message holds into a verdict, so an exception escaping
`Executor.handle` is a fault on our side or a dependency's (a bug, a backend that broke
mid-call). The delivery goes back to its queue so that nothing is lost, but at most
`LIMIT` times per message in this process: a message that keeps failing would otherwise
be fetched again at once, forever, with a traceback each time. Past the limit it is
dead-lettered with the last error as its reason. The traceback is logged for the first
failure of a message; later ones get one line each. A `BrokerConnectionError` (the
broker unreachable, locked or out of disk) is the broker's fault, not the message's:
not counted.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from celeriac.exceptions import BrokerConnectionError
from celeriac.worker.admit import describe_error

if TYPE_CHECKING:
    from celeriac.brokers.base import Broker, Delivery

__all__ = ["LIMIT", "FallbackRequeues"]

logger = logging.getLogger("celeriac.worker")

#: Requeues of one message, per process, before it is dead-lettered.
LIMIT = 3
# Messages remembered at once (the oldest are forgotten first).
REMEMBERED = 10_000


def message_key(delivery: Delivery) -> str:
    """What identifies a message across its redeliveries: its task id, else its body."""
    message = delivery.message
    headers = message.headers if isinstance(message.headers, dict) else {}
    task_id = headers.get("id")
    if isinstance(task_id, str) and task_id:
        return task_id
    body = message.body if isinstance(message.body, bytes) else b""
    return "body:" + hashlib.blake2b(body, digest_size=16).hexdigest()


class FallbackRequeues:
    """Counts and caps the requeues of deliveries whose handling raised."""

    def __init__(self, broker: Broker, *, limit: int = LIMIT) -> None:
        self.broker = broker
        self.limit = limit
        self._counts: OrderedDict[str, int] = OrderedDict()
        #: Requeues done and messages dead-lettered here (for tests and stats).
        self.requeued = 0
        self.dead_lettered = 0

    def failed(self, delivery: Delivery, exc: BaseException) -> None:
        """`delivery`'s handling raised `exc`: requeue it, or dead-letter it past the cap.
        Never raises."""
        reason = describe_error(exc)
        if isinstance(exc, BrokerConnectionError):
            # The broker, not the message (unreachable, locked, disk full): not counted.
            logger.warning(
                "Delivery %s could not be handled, the broker is unavailable: %s",
                delivery.tag,
                reason,
            )
            self._requeue(delivery)
            return
        key = message_key(delivery)
        count = self._counts.pop(key, 0) + 1
        if count > self.limit:
            logger.error(
                "Delivery %s (%s) failed %d times; moved to dead letters: %s",
                delivery.tag,
                key,
                count,
                reason,
            )
            try:
                self.broker.dead_letter(delivery, reason=f"handling failed {count} times: {reason}")
                self.dead_lettered += 1
                return
            except Exception as failure:  # isolation boundary: fall back to a requeue
                logger.error(
                    "Delivery %s could not be dead-lettered (%s); returning it",
                    delivery.tag,
                    describe_error(failure),
                )
        elif count == 1:
            logger.error(
                "Delivery %s could not be handled; returning it to the queue (%d of %d)",
                delivery.tag,
                count,
                self.limit,
                exc_info=exc,
            )
        else:
            logger.error(
                "Delivery %s could not be handled again; returning it (%d of %d): %s",
                delivery.tag,
                count,
                self.limit,
                reason,
            )
        self._counts[key] = count
        while len(self._counts) > REMEMBERED:
            self._counts.popitem(last=False)
        self._requeue(delivery)

    def _requeue(self, delivery: Delivery) -> None:
        try:
            self.broker.reject(delivery, requeue=True)
            self.requeued += 1
        except Exception as failure:  # isolation boundary: the lease brings it back
            logger.error(
                "Delivery %s could not be returned either; its lease will lapse and it "
                "will come back: %s",
                delivery.tag,
                describe_error(failure),
            )
