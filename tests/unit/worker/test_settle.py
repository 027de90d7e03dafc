"""Settlement of refused deliveries, one verdict at a time, on the memory broker."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

from celeriac import Celeriac, states
from celeriac._time import utcnow
from celeriac.brokers.memory import MemoryBroker
from celeriac.exceptions import NotRegistered, TaskRevokedError
from celeriac.protocol.codec import TaskCall, encode_task
from celeriac.worker.admit import DeadLetter, Defer, Revoked
from celeriac.worker.holdings import AckBuffer, Holdings, Shutdown
from celeriac.worker.settle import Settler

if TYPE_CHECKING:
    from celeriac.brokers.base import Delivery


def memory(app: Celeriac) -> MemoryBroker:
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    return broker


@pytest.fixture
def settler(app: Celeriac) -> Settler:
    holdings = Holdings(app.broker, Shutdown(), window=4)
    acks = AckBuffer(app.broker, holdings)
    return Settler(app, app.broker, acks, hostname="test@here", sender=None)


def leased(app: Celeriac, **options: Any) -> tuple[TaskCall, Delivery]:
    call = TaskCall(name="tests.add", id=str(uuid.uuid4()), args=[1, 2], **options)
    app.broker.publish(encode_task(call), queue="celery")
    [delivery] = app.broker.receive(["celery"], limit=1, timeout=1)
    return call, delivery


def test_a_dead_letter_keeps_the_message_and_fails_the_task(
    app: Celeriac, settler: Settler
) -> None:
    call, delivery = leased(app)
    settler.refuse(delivery, DeadLetter(call, NotRegistered(call.name), "unknown task"))
    [letter] = app.broker.list_dead_letters()
    assert letter.reason == "unknown task"
    assert settler.stats.dead_lettered == 1
    with pytest.raises(NotRegistered):
        app.AsyncResult(call.id).get(timeout=1)


def test_a_revoked_task_is_recorded_and_acked(app: Celeriac, settler: Settler) -> None:
    call, delivery = leased(app)
    settler.refuse(delivery, Revoked(call))
    assert app.AsyncResult(call.id).state == states.REVOKED
    with pytest.raises(TaskRevokedError):
        app.AsyncResult(call.id).get(timeout=1)
    assert memory(app).leased_count() == 0
    assert app.broker.list_dead_letters() == []


def test_a_deferral_waits_for_the_next_fetch(app: Celeriac, settler: Settler) -> None:
    eta = utcnow() + timedelta(seconds=30)
    call, delivery = leased(app, eta=eta)
    settler.refuse(delivery, Defer(call, eta))
    # Still leased: the deferral goes out with the ack buffer's next send.
    assert settler.acks.holds(delivery)
    assert memory(app).leased_count() == 1
    settler.acks.flush()
    assert memory(app).leased_count() == 0
    # Waiting broker-side for its ETA: nothing to fetch now.
    assert app.broker.receive(["celery"], limit=1, timeout=0.01) == []
