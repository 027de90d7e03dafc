"""What the RabbitMQ broker declares, and how: Celery's task-queue layout, the
dead-letter queue and the delay ladder, each declared once per connection.

A task queue `Q` is declared exactly as kombu declares Celery's
`Queue(Q, Exchange(Q, "direct"), routing_key=Q)`: a durable direct exchange `Q`, the
durable queue `Q` (not auto-delete, not exclusive, arguments only when configured),
and the binding `Q` → `Q` with key `Q`. RabbitMQ refuses (406) a re-declaration with
other flags or arguments; that refusal becomes an `ImproperlyConfigured` naming the
queue and the argument.

Declarations a message needs travel with it as small tuples ("needs"), so the
publisher can declare them on whichever connection it uses and remember them there:
`("queue", Q)`, `("dead-letters",)`, `("bind", exchange, Q, routing_key)`,
`("ladder", Q)`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from celeriac.brokers.amqp.delay import LEVELS, DelayLayout
from celeriac.connections.amqp import is_channel_error
from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from collections.abc import Hashable, Mapping

    import amqp

    from celeriac.brokers.amqp.link import Link

__all__ = ["EntityLayout", "Need", "check_name"]

Need = tuple[str, ...]

# RabbitMQ 4's default delivery limit of quorum queues, set explicitly for older servers
# (3.x has none: a message whose consumer keeps dying would come back for ever).
DEFAULT_DELIVERY_LIMIT = 20

_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)'")


class EntityLayout:
    """Declares queues, exchanges and bindings the way the broker's options say.

    Args:
        max_priority: `x-max-priority` for every task queue (Celery's
            `task_queue_max_priority`), unless `queue_arguments` sets one.
        queue_arguments: Extra AMQP arguments per queue name.
        exchange_types: The type of each named exchange to declare (default direct).
        dead_letter_queue: Name of the dead-letter queue.
        delay: The delay ladder's names.
        queue_type: "classic", or "quorum" to declare every task queue as a quorum
            queue (a queue's own `x-queue-type` argument wins).
        delivery_limit: `x-delivery-limit` of quorum queues: a message returned this
            many times (its consumer died, or rejected it) goes to the dead-letter
            queue, moved there by RabbitMQ, at least once. None declares quorum queues
            exactly as Celery does (`x-queue-type` only), for fleets shared with stock
            Celery workers; set the limit with a RabbitMQ policy then.
    """

    def __init__(
        self,
        *,
        max_priority: int | None,
        queue_arguments: Mapping[str, Mapping[str, Any]],
        dead_letter_queue: str,
        delay: DelayLayout,
        queue_type: str = "classic",
        delivery_limit: int | None = DEFAULT_DELIVERY_LIMIT,
        exchange_types: Mapping[str, str] | None = None,
    ) -> None:
        if queue_type not in ("classic", "quorum"):
            raise ImproperlyConfigured(f"queue_type={queue_type!r}: use 'classic' or 'quorum'")
        self.queue_type = queue_type
        self.delivery_limit = delivery_limit
        self.max_priority = max_priority
        self._exchange_types = dict(exchange_types or {})
        self._queue_arguments = {name: dict(args) for name, args in queue_arguments.items()}
        self.dead_letter_queue = dead_letter_queue
        self.delay = delay
        #: Every task queue this layout declared (for tidying up after tests).
        self.declared_queues: set[str] = set()

    # -- what a message needs ------------------------------------------------------------

    @staticmethod
    def queue(name: str) -> Need:
        return ("queue", name)

    @staticmethod
    def bind(exchange: str, queue: str, routing_key: str) -> Need:
        return ("bind", exchange, queue, routing_key)

    @staticmethod
    def ladder(queue: str) -> Need:
        return ("ladder", queue)

    DEAD_LETTERS: Need = ("dead-letters",)

    # -- declaring -----------------------------------------------------------------------

    def queue_arguments(self, queue: str) -> dict[str, Any] | None:
        """The AMQP arguments `queue` is declared with (None: plain classic queue)."""
        args = dict(self._queue_arguments.get(queue) or {})
        if self.queue_type == "quorum":
            args.setdefault("x-queue-type", "quorum")
        if args.get("x-queue-type") == "quorum":
            # Quorum queues have no priorities: task_queue_max_priority is not applied.
            if self.delivery_limit is None:
                return args
            args.setdefault("x-delivery-limit", self.delivery_limit)
            # Over the limit, RabbitMQ moves the message to our dead-letter queue (at
            # least once: it keeps it until the dead-letter queue confirmed it).
            args.setdefault("x-dead-letter-exchange", "")
            args.setdefault("x-dead-letter-routing-key", self.dead_letter_queue)
            args.setdefault("x-dead-letter-strategy", "at-least-once")
            args.setdefault("x-overflow", "reject-publish")
            return args
        # Celery compat: task_queue_max_priority applies only where none is set.
        if "x-max-priority" not in args and self.max_priority is not None:
            args["x-max-priority"] = self.max_priority
        return args or None

    @property
    def has_quorum_queues(self) -> bool:
        """Whether any task queue may be a quorum queue (they refuse global QoS)."""
        return self.queue_type == "quorum" or any(
            args.get("x-queue-type") == "quorum" for args in self._queue_arguments.values()
        )

    def declare_queue(self, channel: amqp.Channel, queue: str) -> None:
        """Declare `queue` as Celery does: its direct exchange, the queue, the binding.

        Raises:
            ImproperlyConfigured: it exists with other flags or arguments.
        """
        check_name(queue, "queue")
        arguments = self.queue_arguments(queue)
        if arguments and "x-dead-letter-routing-key" in arguments:
            # Where RabbitMQ moves what it dead-letters must exist before it does.
            self.declare_dead_letters(channel)
        try:
            channel.exchange_declare(queue, "direct", durable=True, auto_delete=False)
        except Exception as exc:
            raise_inequivalent(exc, "exchange", queue)
            raise
        try:
            channel.queue_declare(
                queue,
                durable=True,
                exclusive=False,
                auto_delete=False,
                arguments=arguments,
            )
        except Exception as exc:
            raise_inequivalent(exc, "queue", queue)
            raise
        channel.queue_bind(queue, exchange=queue, routing_key=queue)
        self.declared_queues.add(queue)

    def declare_dead_letters(self, channel: amqp.Channel) -> None:
        channel.queue_declare(
            self.dead_letter_queue, durable=True, exclusive=False, auto_delete=False
        )

    def ensure(self, link: Link, need: Hashable) -> None:
        """Declare what `need` names on `link`, unless that connection already did."""
        if need in link.declared:
            return
        assert isinstance(need, tuple)
        kind = need[0]
        channel = link.channel
        if kind == "queue":
            self.declare_queue(channel, need[1])
        elif kind == "dead-letters":
            self.declare_dead_letters(channel)
        elif kind == "bind":
            _, exchange, queue, routing_key = need
            self._bind_exchange(link, exchange, queue, routing_key)
        elif kind == "ladder-exchanges":
            self._declare_ladder_exchanges(channel)
        elif kind == "ladder":
            self.ensure(link, ("ladder-exchanges",))
            self._declare_ladder(channel, need[1])
        else:  # pragma: no cover - internal invariant
            raise AssertionError(f"unknown declaration {need!r}")
        link.declared.add(need)

    def _bind_exchange(self, link: Link, exchange: str, queue: str, routing_key: str) -> None:
        # A named exchange that exists keeps its type; a missing one is created as
        # Celery would (a durable exchange, direct unless task_queues says otherwise).
        check_name(exchange, "exchange")
        kind = self._exchange_types.get(exchange, "direct")
        admin = link.admin()
        try:
            admin.exchange_declare(exchange, kind, passive=True)
        except Exception as exc:
            if not is_channel_error(exc):
                raise
            link.reset_admin()
            try:
                link.channel.exchange_declare(exchange, kind, durable=True, auto_delete=False)
            except Exception as declare_exc:
                raise_inequivalent(declare_exc, "exchange", exchange)
                raise
        link.channel.queue_bind(queue, exchange=exchange, routing_key=routing_key)

    def _declare_ladder_exchanges(self, channel: amqp.Channel) -> None:
        delay = self.delay
        # nowait: one round trip for the whole ladder; the final synchronous declare
        # surfaces any error RabbitMQ raised on the way (it closes the channel).
        for level in range(LEVELS):
            channel.exchange_declare(
                delay.exchange(level), "topic", durable=True, auto_delete=False, nowait=True
            )
        for destination, source, key in delay.exchange_bindings():
            channel.exchange_bind(destination, source, key, nowait=True)
        channel.exchange_declare(delay.exchange(0), "topic", passive=True)

    def _declare_ladder(self, channel: amqp.Channel, queue: str) -> None:
        for name, arguments, exchange, key in self.delay.queue_declarations(queue):
            channel.queue_declare(
                name,
                durable=True,
                exclusive=False,
                auto_delete=False,
                arguments=arguments,
                nowait=True,
            )
            channel.queue_bind(name, exchange=exchange, routing_key=key, nowait=True)
        channel.queue_declare(self.delay.out_queue(queue), passive=True)


def check_name(name: str, what: str) -> None:
    """AMQP names are short strings: 1 to 255 bytes.

    Raises:
        ImproperlyConfigured: `name` is empty or too long.
    """
    if not name or len(name.encode()) > 255:
        raise ImproperlyConfigured(f"{what} name {name!r} must be 1 to 255 bytes long")


def raise_inequivalent(exc: BaseException, kind: str, name: str) -> None:
    """Turn RabbitMQ's 406 on a re-declaration into a clear ImproperlyConfigured."""
    if not is_channel_error(exc) or getattr(exc, "reply_code", 0) != 406:
        return
    text = str(getattr(exc, "reply_text", "") or exc)
    match = _INEQUIVALENT.search(text)
    argument = match.group(1) if match else "flags"
    hint = (
        "set the same value for this queue (transport options max_priority / "
        "queue_arguments, as the existing declaration), or delete the queue"
        if kind == "queue"
        else "use a different exchange name, or delete the exchange"
    )
    raise ImproperlyConfigured(
        f"{kind} {name!r} already exists on RabbitMQ with a different {argument!r} than "
        f"this app declares ({text}); {hint}"
    ) from exc
