"""Signed task messages (Celery's `auth` serializer) between celeriac and a stock
Celery 5.7, on Redis and on RabbitMQ: each side's worker runs what the other signs, and
a celeriac worker dead-letters unsigned, tampered and wrongly signed messages with the
reason, never running them.

The keys and self-signed certificates are made by the test; the certificate store
trusts one signer ("alice"). Both apps sign with alice's key.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import amqp
import pytest
import redis

from celeriac.protocol import serializers
from celeriac.protocol.codec import TaskCall, encode_task
from celeriac.protocol.signing import (
    SEPARATOR,
    CertStore,
    Signer,
    certificate_id,
    digest_algorithm,
    load_certificate,
)
from tests.helpers import amqp_connection_args, require_rabbitmq, require_redis, unique, wait_for
from tests.integration.conftest import RunWorker, import_tasks
from tests.integration.interop_redis import stock_worker
from tests.signing_keys import make_identity

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from celeriac.brokers.base import DeadLetter

pytestmark = [pytest.mark.integration, pytest.mark.redis]

# Each test runs on Redis and on RabbitMQ (with Redis results).
BROKERS = [
    pytest.param("redis", id="redis"),
    pytest.param("amqp", id="amqp", marks=pytest.mark.rabbitmq),
]

TIMEOUT = 30.0

SETTINGS = """
URL = {url!r}
BROKER = {broker!r}
PREFIX = {prefix!r}
SETTINGS = dict(
    broker_transport_options={broker_options!r},
    result_backend_transport_options={{"global_keyprefix": PREFIX}},
    task_serializer="auth",
    accept_content=["auth"],
    result_accept_content=["json"],
    security_key={key!r},
    security_certificate={certificate!r},
    security_cert_store={store!r},
)


def add(x, y):
    return x + y


def record(tag):
    client = redis.Redis.from_url(URL)
    client.rpush(PREFIX + "ran", tag)
    client.close()
    return tag
"""

CELERIAC_APP = """
import redis
from celeriac import Celeriac
{settings}
app = Celeriac("signed", broker=BROKER, backend=URL, **SETTINGS)
app.setup_security()
add = app.task(name="signed.add")(add)
record = app.task(name="signed.record")(record)
"""

CELERY_APP = """
import redis
import celery
{settings}
app = celery.Celery("signed", broker=BROKER, backend=URL, set_as_current=False)
app.conf.update(
    SETTINGS,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
app.setup_security()
add = app.task(name="signed.add")(add)
record = app.task(name="signed.record")(record)
"""

# A stock Celery producer: sends add(20, 22) to a queue and prints the result.
CELERY_PRODUCER = """
import sys
from stockproj import add, app
print(add.apply_async((20, 22), queue=sys.argv[1]).get(timeout=30))
app.close()
"""


@pytest.fixture(params=BROKERS)
def place(request: pytest.FixtureRequest, tasks_dir: Path) -> Iterator[dict[str, Any]]:
    url = require_redis()
    pytest.importorskip("cryptography")
    prefix = unique("signed") + ":"
    dead_letters = unique("signed-dead")
    if request.param == "amqp":
        broker, broker_options = require_rabbitmq(), {"dead_letter_queue": dead_letters}
    else:
        broker, broker_options = url, {"global_keyprefix": prefix}
    keys = tasks_dir / "keys"
    alice = make_identity(keys, "alice")
    store = tasks_dir / "store"
    store.mkdir()
    shutil.copy(alice.certificate, store)
    settings = SETTINGS.format(
        url=url,
        broker=broker,
        broker_options=broker_options,
        prefix=prefix,
        key=str(alice.key),
        certificate=str(alice.certificate),
        store=str(store),
    )
    (tasks_dir / "tasks.py").write_text(textwrap.dedent(CELERIAC_APP.format(settings=settings)))
    (tasks_dir / "stockproj.py").write_text(textwrap.dedent(CELERY_APP.format(settings=settings)))
    (tasks_dir / "produce.py").write_text(textwrap.dedent(CELERY_PRODUCER))
    before = serializers.get_serializer("auth")
    queues: list[str] = []
    yield {
        "url": url,
        "prefix": prefix,
        "alice": alice,
        "store": store,
        "keys": keys,
        "queues": queues,
    }
    serializers.register(before)  # the registry is process-wide (as kombu's is)
    if request.param == "amqp":
        _delete_amqp(queues, dead_letters)
    client = redis.Redis.from_url(url)
    keys_written = list(client.scan_iter(match=f"{prefix}*"))
    if keys_written:
        client.delete(*keys_written)
    client.close()


def _delete_amqp(queues: list[str], dead_letters: str) -> None:
    connection = amqp.Connection(**amqp_connection_args())
    connection.connect()
    channel = connection.channel()
    for queue in queues:
        channel.queue_delete(queue)
        channel.exchange_delete(queue)
    channel.queue_delete(dead_letters)
    connection.close()


@pytest.fixture
def ours(place: dict[str, Any], tasks_dir: Path) -> Iterator[Any]:
    """The celeriac app in this process: a producer that signs."""
    module = import_tasks(tasks_dir)
    yield module
    module.app.close()


def test_a_stock_worker_runs_what_celeriac_signs(
    place: dict[str, Any], ours: Any, tasks_dir: Path
) -> None:
    queue = unique("to-celery")
    place["queues"].append(queue)
    with stock_worker(tasks_dir, "stockproj", "-P", "solo", "-Q", queue) as worker:
        result = ours.add.apply_async((2, 3), queue=queue)
        assert result.get(timeout=TIMEOUT) == 5, worker.tail()
        worker.assert_healthy()


def test_celeriac_runs_what_a_stock_producer_signs(
    place: dict[str, Any], tasks_dir: Path, run_worker: RunWorker
) -> None:
    queue = unique("to-celeriac")
    place["queues"].append(queue)
    worker = run_worker("-c", "1", "-Q", queue)  # prefork: the children check too
    produced = subprocess.run(
        [sys.executable, "produce.py", queue],
        cwd=tasks_dir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert produced.stdout.strip() == "42", produced.stderr + worker.output()
    assert "ERROR" not in worker.output()


def test_unsigned_tampered_and_forged_messages_are_dead_lettered_and_never_run(
    place: dict[str, Any], ours: Any, run_worker: RunWorker
) -> None:
    queue = unique("guarded")
    place["queues"].append(queue)
    broker = ours.app.broker
    # Unsigned: plain JSON.
    unsigned = encode_task(TaskCall(name="signed.record", id=unique("u"), args=["unsigned"]))
    # Tampered: signed by alice, then the argument changed.
    signed = encode_task(
        TaskCall(name="signed.record", id=unique("t"), args=["original"]), serializer="auth"
    )
    fields = base64.b64decode(signed.body).split(SEPARATOR, 4)
    fields[4] = fields[4].replace(b"original", b"tampered")
    tampered = replace(signed, body=base64.b64encode(SEPARATOR.join(fields)))
    # Forged: signed with mallory's key, who is not in the store.
    mallory = make_identity(place["keys"], "mallory")
    from cryptography.hazmat.primitives import serialization

    alice = load_certificate(place["alice"].certificate.read_bytes(), source="alice")
    forger = Signer(
        key=serialization.load_pem_private_key(mallory.key.read_bytes(), None),  # type: ignore[arg-type]
        signer_id=certificate_id(alice),  # claims to be alice
        store=CertStore(str(place["store"])),
        digest=digest_algorithm("sha256"),
    )
    forged = replace(
        signed,
        headers={**signed.headers, "id": unique("f")},
        body=forger.dumps([["forged"], {}, {"callbacks": None}]),
    )
    for message in (unsigned, tampered, forged):
        broker.publish(message, queue=queue)

    run_worker("-P", "solo", "-Q", queue)
    # A good one after them: once it has run, the three were seen.
    assert ours.record.apply_async(("good",), queue=queue).get(timeout=TIMEOUT) == "good"

    def three_dead_letters() -> list[DeadLetter]:
        letters: list[DeadLetter] = broker.list_dead_letters()
        return letters if len(letters) >= 3 else []

    dead = wait_for(three_dead_letters, timeout=10, what="three dead letters")
    reasons = sorted(letter.reason for letter in dead)
    assert any("application/json" in reason for reason in reasons), reasons
    assert sum("bad signature" in reason for reason in reasons) == 2, reasons
    client = redis.Redis.from_url(place["url"])
    try:
        assert client.lrange(place["prefix"] + "ran", 0, -1) == [b"good"]
    finally:
        client.close()


def test_a_worker_that_accepts_auth_without_setup_security_refuses_to_start(
    place: dict[str, Any], tasks_dir: Path, run_worker: RunWorker
) -> None:
    source = (tasks_dir / "tasks.py").read_text().replace("app.setup_security()", "")
    (tasks_dir / "tasks.py").write_text(source)
    worker = run_worker("-P", "solo", "-Q", unique("nosetup"), wait=False)
    assert worker.wait(timeout=30) != 0
    assert "app.setup_security() was not called" in worker.output()
