"""The app: defaults, configuration sources, URLs, task registration, sending."""

from __future__ import annotations

import sys
import textwrap
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from celeriac import Celeriac, Celery, shared_task
from celeriac._time import utcnow
from celeriac.brokers.memory import MemoryBroker
from celeriac.exceptions import ImproperlyConfigured, MessageTooLarge
from celeriac.protocol.codec import decode_task
from celeriac.testing import memory_app

if TYPE_CHECKING:
    from pathlib import Path

ACCEPT = frozenset({"application/json"})


def sent(app: Celeriac, queue: str = "celery") -> Any:
    [delivery] = app.broker.receive([queue], limit=1, timeout=1)
    return delivery


def test_celery_is_an_alias_of_celeriac() -> None:
    assert Celery is Celeriac


def test_no_broker_url_means_the_embedded_sqlite_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (
        "CELERIAC_BROKER_URL",
        "CELERY_BROKER_URL",
        "CELERIAC_RESULT_BACKEND",
        "CELERY_RESULT_BACKEND",
    ):
        monkeypatch.delenv(variable, raising=False)
    app = Celeriac("t")
    assert app.broker_url == "sqlite:///celeriac.db"
    assert app.result_backend_url == "sqlite:///celeriac.db"


@pytest.mark.parametrize(
    ("broker", "backend"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("sqlite:///x.db", "sqlite:///x.db"),
        ("amqp://guest:guest@localhost//", "rpc://"),
        ("memory://a", "memory://a"),
    ],
)
def test_the_result_backend_follows_the_broker(broker: str, backend: str) -> None:
    assert Celeriac("t", broker=broker).result_backend_url == backend


def test_environment_variables_override_the_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_BROKER_URL", "memory://from-env")
    monkeypatch.setenv("CELERIAC_RESULT_BACKEND", "memory://results-env")
    app = Celeriac("t", broker="memory://given")
    assert app.broker_url == "memory://from-env"
    assert app.result_backend_url == "memory://results-env"


def test_celery_environment_variables_are_read_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERIAC_BROKER_URL", raising=False)
    monkeypatch.setenv("CELERY_BROKER_URL", "memory://celery-env")
    assert Celeriac("t").broker_url == "memory://celery-env"


def test_an_unknown_url_scheme_says_what_to_write() -> None:
    app = Celeriac("t", broker="kafka://localhost:9092")
    with pytest.raises(ImproperlyConfigured, match=r"redis://.*sqlite://"):
        app.create_broker()


def test_a_bad_setting_value_is_refused_with_a_hint() -> None:
    with pytest.raises(ImproperlyConfigured, match="worker_prefetch_multiplier"):
        Celeriac("t", worker_prefetch_multiplier="many")


def test_config_from_object_reads_a_module_by_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"settings_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("task_default_queue = 'from_module'\nresult_expires = 5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Celeriac("t", broker="memory://")
    app.config_from_object(name)
    assert app.conf.task_default_queue == "from_module"
    assert app.conf.result_expires == 5.0


def test_config_from_object_reads_an_object() -> None:
    app = Celeriac("t", broker="memory://")
    app.config_from_object(SimpleNamespace(task_track_started=True, worker_concurrency=3))
    assert app.conf.task_track_started is True
    assert app.conf["worker_concurrency"] == 3


def test_config_from_object_with_a_namespace_reads_prefixed_names() -> None:
    app = Celeriac("t", broker="memory://")
    app.config_from_object(
        {"CELERY_TASK_DEFAULT_QUEUE": "django", "DEBUG": True}, namespace="CELERY"
    )
    assert app.conf.task_default_queue == "django"
    assert "debug" not in app.conf


def test_autodiscover_imports_each_packages_tasks_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = f"pkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "tasks.py").write_text(
        textwrap.dedent("""
        from celeriac import shared_task

        @shared_task(name="discovered.ping")
        def ping():
            return "pong"
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Celeriac("t", broker="memory://")
    app.autodiscover_tasks([package])
    assert "discovered.ping" not in app.tasks  # lazily, at finalize
    app.finalize()
    assert "discovered.ping" in app.tasks
    sys.modules.pop(f"{package}.tasks", None)


def test_task_names_default_to_module_and_function() -> None:
    app = memory_app()

    @app.task
    def compute() -> None:
        pass

    assert compute.name == f"{__name__}.compute"


def test_tasks_defined_in_main_take_the_apps_name() -> None:
    app = memory_app("myproj")

    def job() -> None:
        pass

    job.__module__ = "__main__"
    assert app.task(job).name == "myproj.job"


def test_an_unknown_task_option_is_refused() -> None:
    app = memory_app()
    with pytest.raises(ImproperlyConfigured, match="max_retry"):
        app.task(max_retry=3)(lambda: None)  # type: ignore[call-overload]


def test_a_soft_limit_above_the_hard_limit_is_refused() -> None:
    app = memory_app()
    with pytest.raises(ImproperlyConfigured, match="soft_time_limit"):
        app.task(soft_time_limit=10, time_limit=5)(lambda: None)


def test_shared_task_is_registered_in_every_app() -> None:
    first = memory_app()

    @shared_task(name=f"shared.{uuid.uuid4().hex[:6]}")
    def hello() -> str:
        return "hi"

    second = memory_app()
    assert hello.name in first.tasks
    assert hello.name in second.tasks


def test_send_task_publishes_a_protocol_v2_message() -> None:
    app = memory_app()
    result = app.send_task("remote.add", args=(2, 3), kwargs={"z": 1})
    delivery = sent(app)
    headers = delivery.message.headers
    assert headers["task"] == "remote.add"
    assert headers["id"] == result.id
    assert headers["root_id"] == result.id
    assert headers["lang"] == "py"
    call = decode_task(delivery.message, accept=ACCEPT)
    assert (call.args, call.kwargs) == ([2, 3], {"z": 1})
    assert delivery.message.properties["reply_to"] == app.thread_oid


def test_apply_async_options_reach_the_message() -> None:
    app = memory_app()

    @app.task
    def job(x: int) -> int:
        return x

    @app.task
    def after(x: int) -> None:
        pass

    before = utcnow()
    job.apply_async(
        (1,),
        countdown=0.01,
        expires=60,
        priority=7,
        queue="jobs",
        link=after.s(),
        link_error=after.si(0),
        headers={"tenant": "acme"},
        ignore_result=True,
        time_limit=30,
        soft_time_limit=20,
        task_id="fixed-id",
        shadow="job-shadow",
    )
    delivery = wait_delivery(app, "jobs")
    message = delivery.message
    call = decode_task(message, accept=ACCEPT)
    assert call.id == "fixed-id"
    assert call.eta is not None
    assert call.eta >= before
    assert call.expires is not None
    assert call.expires - before > timedelta(seconds=59)
    assert message.properties["priority"] == 7
    assert int(message.properties["expiration"]) > 58000
    assert call.callbacks == [dict(after.s())]
    assert call.errbacks is not None
    assert call.errbacks[0]["immutable"] is True
    assert call.headers == {"tenant": "acme"}
    assert call.ignore_result is True
    assert (call.time_limit, call.soft_time_limit) == (30, 20)
    assert message.headers["shadow"] == "job-shadow"
    assert message.headers["timelimit"] == [30, 20]


def wait_delivery(app: Celeriac, queue: str) -> Any:
    deliveries = app.broker.receive([queue], limit=1, timeout=2)
    assert deliveries, f"nothing arrived in {queue}"
    return deliveries[0]


def test_task_routes_pick_the_queue() -> None:
    app = memory_app(task_routes={"tests.mail.*": {"queue": "mail"}})

    @app.task(name="tests.mail.send")
    def send() -> None:
        pass

    send.delay()
    assert app.broker.size("mail") == 1
    assert app.broker.size("celery") == 0


def test_countdown_puts_the_message_in_the_delayed_store() -> None:
    app = memory_app()

    @app.task
    def later() -> None:
        pass

    later.apply_async(countdown=60)
    assert app.broker.receive(["celery"], limit=1, timeout=0.1) == []
    assert app.broker.size("celery") == 1


def test_an_aware_eta_in_another_timezone_is_kept_as_the_same_instant() -> None:
    app = memory_app()

    @app.task
    def at() -> None:
        pass

    eta = datetime.now(timezone(timedelta(hours=5))) + timedelta(milliseconds=1)
    at.apply_async(eta=eta)
    call = decode_task(wait_delivery(app, "celery").message, accept=ACCEPT)
    assert call.eta == eta


def test_an_oversized_message_is_refused_before_sending() -> None:
    app = memory_app(task_max_message_size=100)

    @app.task
    def big(data: str) -> None:
        pass

    with pytest.raises(MessageTooLarge, match="task_max_message_size"):
        big.delay("x" * 1000)
    assert app.broker.size("celery") == 0


def test_a_group_is_published_in_one_batch() -> None:
    from celeriac import group

    app = memory_app()

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    calls: list[int] = []
    original = broker.publish_many

    def counting(items: Any) -> None:
        calls.append(len(items))
        original(items)

    broker.publish_many = counting  # type: ignore[method-assign]
    group(add.s(i, i) for i in range(10))()
    assert calls == [10]
    assert broker.size("celery") == 10


def test_a_body_that_compresses_well_is_still_refused_when_too_large() -> None:
    # Workers check the size after decompression too: the producer must not send it.
    app = memory_app(task_max_message_size=1000, task_compression="zlib")

    @app.task
    def big(data: str) -> None:
        pass

    with pytest.raises(MessageTooLarge):
        big.delay("x" * 100_000)
    assert app.broker.size("celery") == 0
