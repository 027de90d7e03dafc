"""The app: defaults, configuration sources, URLs, task registration."""

from __future__ import annotations

import pathlib
import sys
import textwrap
import uuid
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest

from celeriac import Celeriac, Celery, shared_task
from celeriac.exceptions import ImproperlyConfigured
from celeriac.testing import memory_app

if TYPE_CHECKING:
    from pathlib import Path


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
    # Beside the module that created the app (this file), as an absolute path.
    expected = f"sqlite:///{pathlib.Path(__file__).resolve().parent / 'celeriac.db'}"
    assert app.broker_url == expected
    assert app.broker_url.startswith("sqlite:////")
    assert app.result_backend_url == expected


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


def test_shared_task_returns_the_current_apps_task_whatever_other_apps_exist() -> None:
    # Celery's shared_task resolves to the current app's task; with many apps alive the
    # returned object must still be the current one's (Flask's pattern relies on it:
    # its task_cls runs tasks in the app context). The apps are kept in a set, so ten
    # tasks over 21 apps would catch an arbitrary pick all but never.
    current = Celeriac("current", broker="memory://", backend="memory://")
    others = [memory_app() for _ in range(20)]
    current.set_current()
    for _ in range(10):

        @shared_task(name=f"shared.{uuid.uuid4().hex[:6]}")
        def hello() -> str:
            return "hi"

        assert hello is current.tasks[hello.name]
        assert all(hello.name in app.tasks for app in others)
