"""Fixtures that build every broker and backend implementation for the contract suites.

Each implementation is a parameter; a networked one is isolated per test by a unique key
prefix or queue names, and skipped locally (failed under CI) when its server is down.
"""

from __future__ import annotations

import gc
import importlib
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pytest

from celeriac.backends import create_backend
from celeriac.backends.base import ResultBackend
from celeriac.brokers import create_broker
from celeriac.brokers.base import Broker
from tests.helpers import require_postgres, require_rabbitmq, require_redis, unique

if TYPE_CHECKING:
    from pathlib import Path

    from celeriac._time import Clock

BROKERS = ["memory", "sqlite", "redis", "amqp"]
# "django": the ORM backend (celeriac.contrib.django) on a PostgreSQL database.
BACKENDS = ["memory", "sqlite", "redis", "django"]


def _available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


BrokerFactory = Callable[..., Broker]
BackendFactory = Callable[..., ResultBackend]


@pytest.fixture(params=BROKERS)
def broker_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerFactory]:
    """Build brokers of one kind that share one store; all closed after the test."""
    kind: str = request.param
    made: list[Broker] = []
    prefix = unique("c")
    if kind == "memory":
        url = f"memory://{prefix}"
        options: dict[str, Any] = {}
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'broker.db'}"
        options = {}
    elif kind == "redis":
        url = require_redis()
        options = {"global_keyprefix": f"{prefix}:"}
    else:
        url = require_rabbitmq()
        # RabbitMQ honours priorities only on queues declared with x-max-priority;
        # like Celery (task_queue_max_priority) that is opt-in, so the suite opts in.
        options = {"dead_letter_queue": f"{prefix}.dead", "max_priority": 10}
    if kind in ("sqlite", "redis", "amqp") and not _available(f"celeriac.brokers.{kind}"):
        pytest.fail(f"broker module celeriac.brokers.{kind} is missing")

    def make(
        consumer_id: str = "consumer-a", *, clock: Clock | None = None, **extra: Any
    ) -> Broker:
        broker = create_broker(
            url,
            transport_options={**options, **extra},
            consumer_id=f"{prefix}/{consumer_id}",
            clock=clock,
        )
        broker.connect()
        made.append(broker)
        return broker

    make.prefix = prefix  # type: ignore[attr-defined]
    yield make
    for broker in made:
        try:
            broker.purge_dead_letters()
            # RabbitMQ keeps durable queues: remove the ones this test made.
            declared = getattr(broker, "declared_queues", None)
            if declared is not None:
                for queue in {*declared, broker.dead_letter_queue}:  # type: ignore[attr-defined]
                    broker.delete_queue(queue)  # type: ignore[attr-defined]
        finally:
            broker.close()
    if kind == "redis":
        _delete_redis_keys(url, f"{prefix}:")


@pytest.fixture(params=BACKENDS)
def backend_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendFactory]:
    kind: str = request.param
    made: list[ResultBackend] = []
    prefix = unique("c")
    if kind == "memory":
        url = f"memory://{prefix}"
        options: dict[str, Any] = {}
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'results.db'}"
        options = {}
    elif kind == "django":
        request.getfixturevalue("django_orm")
        url = "django-db://"
        options = {}
    else:
        url = require_redis()
        options = {"global_keyprefix": f"{prefix}:"}

    def make(**kwargs: Any) -> ResultBackend:
        kwargs.setdefault("expires", 3600)
        backend = create_backend(url, transport_options=options, **kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()
    if kind == "redis":
        _delete_redis_keys(url, f"{prefix}:")


@pytest.fixture(scope="session")
def _django_database() -> Iterator[None]:
    """Django configured in this process on a PostgreSQL database of its own, with the
    result tables migrated; the database is dropped at the end of the session."""
    import django
    import psycopg
    from django.conf import settings
    from django.core.management import call_command

    admin_url = require_postgres()
    name = unique("contract").replace("-", "_")
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    parsed = urlparse(admin_url)
    settings.configure(
        INSTALLED_APPS=["celeriac.contrib.django"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": name,
                "USER": parsed.username or "",
                "PASSWORD": parsed.password or "",
                "HOST": parsed.hostname or "",
                "PORT": str(parsed.port or ""),
            }
        },
        USE_TZ=True,
    )
    django.setup()
    call_command("migrate", "celeriac", verbosity=0)
    try:
        yield
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def django_orm(_django_database: None) -> Iterator[None]:
    """The ORM backend's tables, emptied for one test."""
    from celeriac.contrib.django import models

    for model in (models.TaskResult, models.GroupResult, models.ChordCounter, models.Revocation):
        model.objects.all().delete()
    yield
    # Django opens one connection per thread and closes it at the end of a request (a
    # worker: of a task); the bare threads of these tests have neither, so what they
    # left open is collected here rather than in whichever test runs next.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _delete_redis_keys(url: str, prefix: str) -> None:
    """Leave the shared Redis as the test found it: drop every key under the prefix."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
