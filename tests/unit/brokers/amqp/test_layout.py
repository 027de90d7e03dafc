"""`celeriac.brokers.amqp.layout`: the arguments task queues are declared with."""

from __future__ import annotations

from celeriac.brokers.amqp.delay import DelayLayout
from celeriac.brokers.amqp.layout import EntityLayout


def layout(**options: object) -> EntityLayout:
    return EntityLayout(
        max_priority=options.pop("max_priority", None),  # type: ignore[arg-type]
        queue_arguments=options.pop("queue_arguments", {}),  # type: ignore[arg-type]
        dead_letter_queue="dead",
        delay=DelayLayout("celeriac.delay"),
        **options,  # type: ignore[arg-type]
    )


def test_a_quorum_queue_gets_a_delivery_limit_and_dead_letters_at_least_once() -> None:
    args = layout(queue_type="quorum", delivery_limit=5).queue_arguments("tasks")
    assert args == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 5,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "dead",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def test_a_quorum_queue_gets_no_priority_but_a_classic_one_does() -> None:
    mixed = layout(max_priority=9, queue_arguments={"q": {"x-queue-type": "quorum"}})
    assert "x-max-priority" not in (mixed.queue_arguments("q") or {})
    assert mixed.queue_arguments("other") == {"x-max-priority": 9}
    assert mixed.has_quorum_queues


def test_classic_queues_keep_their_plain_declaration() -> None:
    plain = layout()
    assert plain.queue_arguments("tasks") is None
    assert not plain.has_quorum_queues


def test_without_a_delivery_limit_a_quorum_queue_is_declared_as_celery_declares_it() -> None:
    assert layout(queue_type="quorum", delivery_limit=None).queue_arguments("tasks") == {
        "x-queue-type": "quorum"
    }
