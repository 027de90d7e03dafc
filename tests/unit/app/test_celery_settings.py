"""Settings never fail silently: Celery 3 names are read with a warning, Celery settings
celeriac does not honour are refused with what to do, misspellings get "did you mean".
Celery 5.7's own list of settings (celery.app.defaults) is the oracle."""

from __future__ import annotations

import types
from typing import Any

import pytest
from celery.app import defaults as celery_defaults

from celeriac import Celeriac
from celeriac.app import celery_settings
from celeriac.app.config import DEFAULTS, Settings
from celeriac.exceptions import CDeprecationWarning, ImproperlyConfigured

CELERY_SETTINGS = set(celery_defaults.DEFAULTS)


def test_every_celery_setting_is_honoured_or_refused_with_advice() -> None:
    honoured = CELERY_SETTINGS & set(DEFAULTS)
    refused = set(celery_settings.UNSUPPORTED)
    assert honoured | refused == CELERY_SETTINGS
    assert not honoured & refused
    assert all(advice for advice in celery_settings.UNSUPPORTED.values())


@pytest.mark.parametrize("name", sorted(celery_settings.UNSUPPORTED))
def test_a_celery_setting_celeriac_does_not_honour_is_refused(name: str) -> None:
    value = object()  # never an accepted value
    with pytest.raises(
        ImproperlyConfigured,
        match=f"setting {name} is a Celery setting that celeriac does not honour: ",
    ):
        Settings({name: value})


def test_the_refusal_says_what_to_do() -> None:
    with pytest.raises(ImproperlyConfigured, match="put the connection details in broker_url"):
        Settings({"broker_host": "rabbit.internal"})


@pytest.mark.parametrize(
    ("name", "value"),
    [(n, v) for n, values in sorted(celery_settings.ACCEPTED_VALUES.items()) for v in values],
)
def test_a_value_that_asks_for_what_celeriac_does_is_accepted(name: str, value: Any) -> None:
    assert Settings({name: value})[name] == value


def test_accepted_values_are_refusable_settings() -> None:
    assert set(celery_settings.ACCEPTED_VALUES) <= set(celery_settings.UNSUPPORTED)


def test_a_misspelt_setting_gets_did_you_mean() -> None:
    with pytest.raises(
        ImproperlyConfigured,
        match=r"unknown setting 'task_acks_laet': did you mean 'task_acks_late'\?",
    ):
        Settings({"task_acks_laet": True})


def test_an_unknown_name_in_a_celery_namespace_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="unknown setting 'worker_frobnicate'"):
        Settings({"worker_frobnicate": 1})


def test_a_setting_of_the_users_own_is_kept() -> None:
    assert Settings({"stripe_api_version": "2024"}).stripe_api_version == "2024"


def test_task_cls_stays_accepted_as_celery_keeps_it_beside_the_settings() -> None:
    assert Settings({"task_cls": "proj.tasks:Base"}).task_cls == "proj.tasks:Base"


# -- config_from_object ----------------------------------------------------------------


def test_a_module_of_celery_3_names_is_read_with_warnings_naming_the_new_names() -> None:
    module = types.SimpleNamespace(
        BROKER_URL="redis://127.0.0.1:6379/3",
        CELERY_RESULT_BACKEND="redis://127.0.0.1:6379/4",
        CELERY_TASK_SERIALIZER="json",
        CELERYD_CONCURRENCY=3,
        DEBUG=True,  # not a setting: ignored, as by Celery
    )
    app = Celeriac("t", set_as_current=False)
    with pytest.warns(CDeprecationWarning) as caught:
        app.config_from_object(module)
    messages = " ".join(str(w.message) for w in caught)
    for new in ("broker_url", "result_backend", "task_serializer", "worker_concurrency"):
        assert f"rename it to {new}" in messages
    assert app.conf.broker_url == "redis://127.0.0.1:6379/3"
    assert app.conf.result_backend == "redis://127.0.0.1:6379/4"
    assert app.conf.worker_concurrency == 3
    assert "DEBUG" not in app.conf
    assert "debug" not in app.conf


def test_mixing_old_and_new_names_is_refused_with_the_renames() -> None:
    module = types.SimpleNamespace(
        BROKER_URL="redis://127.0.0.1:6379/3",
        task_serializer="json",
        result_backend="redis://127.0.0.1:6379/4",
    )
    app = Celeriac("t", set_as_current=False)
    with pytest.raises(ImproperlyConfigured, match=r"mixes .*\n  BROKER_URL -> broker_url"):
        app.config_from_object(module)


def test_celery_ignores_an_old_name_given_under_its_new_name_too() -> None:
    module = types.SimpleNamespace(
        BROKER_URL="redis://127.0.0.1:6379/3", broker_url="redis://127.0.0.1:6379/5"
    )
    app = Celeriac("t", set_as_current=False)
    app.config_from_object(module)
    assert app.conf.broker_url == "redis://127.0.0.1:6379/5"


def test_a_misspelt_name_in_a_django_style_namespace_gets_did_you_mean() -> None:
    settings = types.SimpleNamespace(
        CELERY_BROKER_URL="redis://127.0.0.1:6379/3", CELERY_TASK_ACKS_LAET=True
    )
    app = Celeriac("t", set_as_current=False)
    with pytest.raises(ImproperlyConfigured, match="did you mean 'task_acks_late'"):
        app.config_from_object(settings, namespace="CELERY")


def test_config_source_loads_settings_at_creation() -> None:
    source = types.SimpleNamespace(task_default_queue="work")
    app = Celeriac("t", config_source=source, set_as_current=False)
    assert app.conf.task_default_queue == "work"
    assert "config_source" not in app.conf


def test_strict_typing_false_makes_tasks_skip_the_argument_check() -> None:
    app = Celeriac("t", broker="memory://", strict_typing=False, set_as_current=False)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.typing is False
    assert "strict_typing" not in app.conf
    strict = Celeriac("t", broker="memory://", set_as_current=False)

    @strict.task
    def add2(x: int, y: int) -> int:
        return x + y

    assert add2.typing is True


# A well-formed value other than the one celeriac follows, per fixed setting.
OTHER_VALUES: dict[str, Any] = {
    "broker_connection_retry": False,
    "broker_connection_max_retries": None,
    "worker_autoscaler": "myproj.scaling:Autoscaler",
}


def test_every_fixed_setting_has_another_value_case() -> None:
    assert set(OTHER_VALUES) == set(celery_settings.FIXED)


@pytest.mark.parametrize("name", sorted(celery_settings.FIXED))
def test_a_setting_kept_at_its_one_value_refuses_another(name: str) -> None:
    accepted, advice = celery_settings.FIXED[name]
    assert Settings({name: accepted[0]})[name] == accepted[0]
    with pytest.raises(ImproperlyConfigured, match=f"setting {name}=.* is not honoured") as info:
        Settings({name: OTHER_VALUES[name]})
    assert advice in str(info.value)


def test_fixed_settings_default_to_their_accepted_value() -> None:
    for name, (accepted, _) in celery_settings.FIXED.items():
        assert DEFAULTS[name] in accepted


def test_the_deprecation_warning_points_at_the_line_that_set_the_old_name() -> None:
    app = Celeriac("t", set_as_current=False)
    with pytest.warns(CDeprecationWarning) as caught:
        app.config_from_object({"BROKER_URL": "redis://127.0.0.1:6379/3"})
    assert caught[0].filename == __file__


def test_a_namespaced_name_read_without_the_namespace_is_refused() -> None:
    # Celery drops CELERY_BROKER_URL here silently, and the app falls back to a default.
    app = Celeriac("t", set_as_current=False)
    with pytest.raises(ImproperlyConfigured, match="namespace='CELERY'"):
        app.config_from_object({"CELERY_BROKER_URL": "redis://127.0.0.1:6379/3"})


def test_a_misspelt_celery_3_name_gets_did_you_mean() -> None:
    app = Celeriac("t", set_as_current=False)
    with pytest.raises(ImproperlyConfigured, match="did you mean 'CELERY_ACKS_LATE'"):
        app.config_from_object({"CELERY_ACKS_LAET": True})
