"""Publishing to RabbitMQ: pooled connections, reconnects with backoff, confirms.

`Publisher` runs an operation on a pooled publishing connection (`run`), reconnecting
with backoff for up to `publish_retry_timeout` seconds when the connection fails, and
publishes batches with publisher confirms (`publish`): what a lost connection left
unconfirmed is sent again on a new one (a duplicate is possible, a loss is not), and a
message returned because its queue vanished is declared and sent once more. It also
maps driver errors to celeriac's (`map_error`). The broker (`broker.py`) decides what
to publish; the connections themselves are `link.py`'s.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from celeriac.brokers.amqp.link import Link, LinkLost, LinkPool, Outbound
from celeriac.connections.amqp import (
    Backoff,
    is_channel_error,
    is_connection_error,
    is_permanent_refusal,
)
from celeriac.exceptions import (
    BrokerConnectionError,
    BrokerError,
    ImproperlyConfigured,
    PublishError,
    SerializationError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

    from celeriac.brokers.amqp.delay import DelayLayout
    from celeriac.brokers.amqp.layout import EntityLayout
    from celeriac.brokers.amqp.link import Returned
    from celeriac.connections.amqp import AMQPParams

__all__ = ["Publisher"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _Attempts:
    """One operation's reconnect budget. `in_doubt` counts messages sent whose confirm
    the connection lost; `blocked` is why RabbitMQ had blocked publishing, if it had;
    `publishing`: a 404 is the message's refusal, not the operation's."""

    what: str
    deadline: float
    backoff: Backoff
    in_doubt: int = 0
    blocked: str | None = None
    publishing: bool = False


class Publisher:
    """The publishing side of one broker object.

    Args:
        params: Where and how to connect.
        layout: Declares what each message needs, once per connection.
        delay: The delay ladder's names (to find the queue of a returned message).
        confirm_timeout: Seconds to wait for a publisher confirm (also the write timeout).
        retry_timeout: Seconds an operation keeps reconnecting before it gives up.
        retry_interval_max: Longest pause between reconnection attempts.
        pool_limit: Publishing connections at most.
        on_heartbeat: Called with each new connection's negotiated heartbeat.
        count: Adds to one of the broker's counters (`"_published"`).
    """

    def __init__(
        self,
        params: AMQPParams,
        *,
        layout: EntityLayout,
        delay: DelayLayout,
        confirm_timeout: float,
        retry_timeout: float,
        retry_interval_max: float,
        pool_limit: int,
        on_heartbeat: Callable[[float], None],
        count: Callable[[str, int], None],
    ) -> None:
        self._params = params
        self._layout = layout
        self._delay = delay
        self.confirm_timeout = confirm_timeout
        self._retry_timeout = retry_timeout
        self._retry_interval_max = retry_interval_max
        self._on_heartbeat = on_heartbeat
        self._count = count
        self._host_index = 0
        self.pool = LinkPool(self._new_link, limit=pool_limit)

    def close(self) -> None:
        self.pool.close()

    def _new_link(self) -> Link:
        link = Link(self._params, start=self._host_index, write_timeout=self.confirm_timeout)
        self._host_index = link.host_index
        self._on_heartbeat(float(link.connection.heartbeat or 0))
        return link

    def map_error(self, exc: BaseException, what: str) -> BrokerError | ImproperlyConfigured:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return BrokerConnectionError(
                f"the TLS certificate of RabbitMQ at {self._params.describe(self._host_index)} "
                f"did not verify ({exc}): check the ssl options ca_certs / server_hostname"
            )
        if is_permanent_refusal(exc):
            return BrokerConnectionError(
                f"RabbitMQ at {self._params.describe(self._host_index)} refused the "
                f"connection ({exc}): check the user, password and vhost permissions"
            )
        if is_connection_error(exc):
            return BrokerConnectionError(
                f"cannot reach RabbitMQ at {self._params.describe(self._host_index)} "
                f"to {what}: {exc}"
            )
        return BrokerError(f"RabbitMQ refused to {what}: {exc}")

    def run(self, op: Callable[[Link], T], *, what: str = "connect") -> T:
        """Run `op` on a pooled link, reconnecting with backoff for up to
        `publish_retry_timeout` seconds when the connection fails."""
        attempts = self._attempts(what)
        while True:
            link = self._acquire(attempts)
            if link is None:
                continue
            broken = False
            try:
                return op(link)
            except (BrokerError, ImproperlyConfigured, SerializationError):
                raise
            except Exception as exc:
                broken = is_connection_error(exc)
                self._after_failure(exc, link, attempts)
                continue
            finally:
                self.pool.release(link, broken=broken or link.broken)

    def _attempts(self, what: str) -> _Attempts:
        return _Attempts(
            what=what,
            deadline=time.monotonic() + self._retry_timeout,
            backoff=Backoff(maximum=self._retry_interval_max),
        )

    def _acquire(self, attempts: _Attempts) -> Link | None:
        """A pooled link, or None after a failed connection attempt (retry then)."""
        try:
            return self.pool.acquire(timeout=self._retry_timeout)
        except BrokerError:
            raise
        except Exception as exc:
            self._retry_or_raise(exc, attempts)
            return None

    def _retry_or_raise(self, exc: BaseException, attempts: _Attempts) -> None:
        """Sleep before the next attempt, or raise if retrying cannot help or the time
        is up."""
        what, in_doubt, blocked = attempts.what, attempts.in_doubt, attempts.blocked
        if is_permanent_refusal(exc) or not is_connection_error(exc):
            raise self.map_error(exc, what) from exc
        delay = attempts.backoff.next_delay()
        if time.monotonic() + delay > attempts.deadline:
            where = self._params.describe(self._host_index)
            if in_doubt:
                why = f"; RabbitMQ had blocked publishing ({blocked})" if blocked else ""
                raise PublishError(
                    f"the connection to RabbitMQ at {where} failed before it confirmed "
                    f"{in_doubt} message(s), and they could not be sent again within "
                    f"{self._retry_timeout:g} s ({exc}{why}): they may or may not have "
                    "been queued"
                ) from exc
            raise BrokerConnectionError(
                f"cannot reach RabbitMQ at {where} to {what} after retrying for "
                f"{self._retry_timeout:g} s: {exc}"
            ) from exc
        logger.warning(
            "RabbitMQ connection failed (%s) while trying to %s; retrying in %.1f s",
            exc,
            what,
            delay,
        )
        self._host_index += 1
        time.sleep(delay)

    def _after_failure(self, exc: Exception, link: Link, attempts: _Attempts) -> None:
        """Return after a lost connection, once it is time to try again on another
        (the caller gives `link` back as broken); raise for anything else."""
        if is_connection_error(exc):
            self.pool.discard_idle()
            self._retry_or_raise(exc, attempts)
            return
        if is_channel_error(exc):
            self._reset_channels(link)
            if attempts.publishing and getattr(exc, "reply_code", 0) == 404:
                raise PublishError(f"RabbitMQ refused the message: {exc}") from exc
        raise self.map_error(exc, attempts.what) from exc

    @staticmethod
    def _reset_channels(link: Link) -> None:
        try:
            link.reset_channel()
            link.reset_admin()
        except Exception:  # the connection is checked on next use
            logger.debug("error resetting channels", exc_info=True)

    def publish(self, items: list[Outbound]) -> None:
        """Publish with confirms; on a lost connection publish the unconfirmed ones
        again on a new connection (a duplicate is possible, a loss is not)."""
        pending = items
        attempts = self._attempts("publish")
        attempts.publishing = True
        resent_returns = False
        while pending:
            link = self._acquire(attempts)
            if link is None:
                continue
            broken = False
            try:
                for item in pending:
                    for need in item.needs:
                        self._layout.ensure(link, need)
                returned = link.publish_all(pending, timeout=self.confirm_timeout)
                self._count("_published", len(pending) - len(returned))
                pending = []
                if returned:
                    if resent_returns:
                        names = ", ".join(sorted({r.routing_key for r in returned})[:5])
                        raise PublishError(
                            f"RabbitMQ could not route {len(returned)} message(s) to "
                            f"{names} even after declaring the queue again"
                        )
                    # The queue vanished since we declared it: declare again, resend.
                    resent_returns = True
                    pending = [self._resend(link, r) for r in returned]
            except LinkLost as lost:
                broken = True
                pending = lost.unconfirmed
                attempts.in_doubt = len(pending)
                attempts.blocked = lost.blocked or attempts.blocked
                self.pool.discard_idle()
                self._retry_or_raise(lost.cause, attempts)
            except (BrokerError, ImproperlyConfigured, SerializationError):
                raise
            except Exception as exc:
                # A lost connection here was lost while declaring: nothing of this
                # batch was sent on it.
                broken = is_connection_error(exc)
                self._after_failure(exc, link, attempts)
            finally:
                self.pool.release(link, broken=broken or link.broken)

    def _resend(self, link: Link, returned: Returned) -> Outbound:
        if returned.exchange:
            queue = self._delay.target_of(returned.routing_key) or returned.routing_key
            needs: tuple[Hashable, ...] = (self._layout.queue(queue), self._layout.ladder(queue))
        else:
            queue = returned.routing_key
            needs = (self._layout.queue(queue),)
        for need in needs:
            link.declared.discard(need)
        logger.warning("queue %r was missing on RabbitMQ: declared it again", queue)
        return Outbound(
            exchange=returned.exchange,
            routing_key=returned.routing_key,
            message=returned.message,
            mandatory=True,
            needs=needs,
        )
