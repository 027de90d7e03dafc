"""Settings: Celery's names and defaults (celery.app.defaults is the oracle), validation
that says what to write, and the environment overrides."""

from __future__ import annotations

import copy
import pickle
import re
from datetime import timedelta
from typing import Any

import pytest
from celery.app import defaults as celery_defaults

from celeriac.app import celery_settings, setting_checks
from celeriac.app.config import DEFAULTS, Settings, new_setting_name
from celeriac.exceptions import CDeprecationWarning, ImproperlyConfigured

# celeriac's documented differences from Celery's defaults.
CELERIAC_DIFFERENCES = {
    "task_acks_late": True,
    # Celery's PersistentScheduler keeps a shelve file; celeriac's keeps state in the broker.
    "beat_scheduler": "celeriac.beat.scheduler:Scheduler",
}
# (`task_cls` is an argument of Celery's constructor, kept with the settings here.)
CELERIAC_ONLY = {
    "task_max_message_size",
    "task_redelivery_limit",
    "result_backend_max_retry_time",
    "task_cls",
    "beat_catch_up",
    "beat_lease_seconds",
    "worker_lost_after",
}


def _comparable(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, tuple):
        return list(value)
    return value


# -- defaults --------------------------------------------------------------------------------


def test_every_setting_is_a_celery_setting_or_a_documented_celeriac_one() -> None:
    unknown = set(DEFAULTS) - set(celery_defaults.DEFAULTS)
    assert unknown == CELERIAC_ONLY


@pytest.mark.parametrize(
    "name", sorted(set(DEFAULTS) & set(celery_defaults.DEFAULTS) - set(CELERIAC_DIFFERENCES))
)
def test_default_equals_celerys(name: str) -> None:
    assert _comparable(Settings()[name]) == _comparable(celery_defaults.DEFAULTS[name])


def test_task_acks_late_defaults_to_true_unlike_celery() -> None:
    assert Settings().task_acks_late is True
    assert celery_defaults.DEFAULTS["task_acks_late"] is False


def test_celeriac_only_defaults() -> None:
    conf = Settings()
    assert conf.task_max_message_size == 1024 * 1024
    assert conf.task_redelivery_limit == 3
    assert conf.result_backend_max_retry_time == 60.0
    assert conf.worker_lost_after == 30.0


# Under a second would be a handful of missed heartbeats (every 0.25 s).
@pytest.mark.parametrize("value", [0, -1, 0.5, None, "30", float("inf")])
def test_worker_lost_after_must_be_a_positive_number_of_seconds(value: Any) -> None:
    with pytest.raises(ImproperlyConfigured, match="worker_lost_after"):
        Settings({"worker_lost_after": value})


def test_worker_lost_after_reaches_the_broker() -> None:
    from celeriac import Celeriac

    app = Celeriac("t", broker="memory://lost-after", worker_lost_after=timedelta(seconds=7))
    try:
        assert app.create_broker().lost_after == 7.0
    finally:
        app.close()


def test_changing_a_list_default_does_not_change_other_settings() -> None:
    first = Settings()
    first.accept_content.append("pickle")
    first.task_publish_retry_policy["max_retries"] = 99
    assert Settings().accept_content == ["json"]
    assert Settings().task_publish_retry_policy["max_retries"] == 3
    assert DEFAULTS["accept_content"] == ["json"]


# -- access --------------------------------------------------------------------------------


def test_settings_are_readable_as_attributes_and_items() -> None:
    conf = Settings({"task_default_queue": "work"})
    assert conf.task_default_queue == conf["task_default_queue"] == "work"
    assert conf.get("task_default_queue") == "work"
    assert "task_default_queue" in conf
    assert "task_default_queue" in list(conf)


def test_setting_an_attribute_validates_and_stores_it() -> None:
    conf = Settings()
    conf.task_default_queue = "other"
    assert conf["task_default_queue"] == "other"
    with pytest.raises(ImproperlyConfigured):
        conf.task_default_queue = ""


def test_unknown_setting_is_an_attribute_error_and_a_key_error() -> None:
    conf = Settings()
    with pytest.raises(AttributeError, match="no setting named 'nope'"):
        _ = conf.nope
    with pytest.raises(KeyError):
        _ = conf["nope"]
    assert conf.get("nope", 5) == 5
    assert "nope" not in conf


def test_update_sets_several_settings_from_a_mapping_and_keywords() -> None:
    conf = Settings()
    conf.update({"task_default_queue": "a", "worker_concurrency": 4}, task_track_started=True)
    assert (conf.task_default_queue, conf.worker_concurrency, conf.task_track_started) == (
        "a",
        4,
        True,
    )


def test_update_validates_each_setting() -> None:
    with pytest.raises(ImproperlyConfigured, match="task_track_started"):
        Settings().update(task_track_started="yes")


def test_constructor_validates_its_values() -> None:
    with pytest.raises(ImproperlyConfigured, match="worker_pool"):
        Settings({"worker_pool": "greenlets"})


def test_unknown_lower_case_settings_are_kept() -> None:
    conf = Settings({"my_project_flag": {"x": 1}})
    assert conf.my_project_flag == {"x": 1}
    assert conf.changes() == {"my_project_flag": {"x": 1}}


def test_changes_lists_only_what_differs_from_the_defaults() -> None:
    conf = Settings({"task_default_queue": "celery", "worker_concurrency": 2})
    assert conf.changes() == {"worker_concurrency": 2}


def test_humanize_hides_passwords() -> None:
    conf = Settings({"broker_url": "redis://:s3cret@127.0.0.1:6379/0"})
    text = conf.humanize()
    assert "s3cret" not in text
    assert "broker_url: 'redis://:***@127.0.0.1:6379/0'" in text


def test_humanize_hides_secrets_in_query_strings_and_option_dicts() -> None:
    conf = Settings(
        {
            "broker_url": "rediss://h:6379/0?ssl_password=pw1&ssl_cert_reqs=required",
            "broker_transport_options": {"password": "pw2", "sentinel_kwargs": {"password": "pw3"}},
            "redis_backend_use_ssl": {"ssl_password": "pw4", "ssl_ca_certs": "/ca.pem"},
            "broker_use_ssl": {"keyfile": "/k.pem", "ca_certs": "/ca.pem"},
            "security_key": "-----BEGIN PRIVATE KEY-----",
            "task_default_routing_key": "tasks",
        }
    )
    text = conf.humanize()
    for secret in ("pw1", "pw2", "pw3", "pw4", "/k.pem", "PRIVATE"):
        assert secret not in text
    assert "/ca.pem" in text
    assert "ssl_cert_reqs=required" in text
    assert "task_default_routing_key: 'tasks'" in text


@pytest.mark.parametrize("name", ["broker_use_ssl", "redis_backend_use_ssl"])
def test_tls_settings_take_true_or_a_dict(name: str) -> None:
    assert Settings({name: True})[name] is True
    assert Settings({name: {"ssl_ca_certs": "/ca.pem"}})[name] == {"ssl_ca_certs": "/ca.pem"}
    with pytest.raises(ImproperlyConfigured, match=name):
        Settings({name: "/ca.pem"})


def test_result_accept_falls_back_to_accept_content() -> None:
    conf = Settings({"accept_content": ["json", "msgpack"]})
    assert conf.result_accept == ["json", "msgpack"]
    conf.result_accept_content = ["application/json"]
    assert conf.result_accept == ["application/json"]


def test_settings_survive_copy_and_pickle() -> None:
    conf = Settings({"broker_url": "redis://127.0.0.1:6379/0"})
    for clone in (copy.copy(conf), copy.deepcopy(conf), pickle.loads(pickle.dumps(conf))):
        assert clone.broker_url == "redis://127.0.0.1:6379/0"


# -- names ---------------------------------------------------------------------------------


def test_an_upper_case_name_that_celery_never_had_is_refused_with_a_hint() -> None:
    with pytest.raises(
        ImproperlyConfigured,
        match=r"lower case .*write 'task_default_queue' instead of 'Task_Default_Queue'",
    ):
        Settings({"Task_Default_Queue": "q"})


@pytest.mark.parametrize(
    ("old", "new"),
    sorted((old, new) for old, new in celery_defaults._TO_NEW_KEY.items() if new in DEFAULTS),
)
def test_a_celery_3_name_is_read_as_the_new_name_with_a_warning(old: str, new: str) -> None:
    assert new_setting_name(old) == new
    conf = Settings()
    value = copy.deepcopy(DEFAULTS[new])
    with pytest.warns(CDeprecationWarning, match=f"setting {old} is Celery 3's name for {new}"):
        conf[old] = value
    assert conf[new] == value
    assert old not in conf


def test_every_celery_setting_has_its_celery_3_name() -> None:
    assert {
        new: old for old, new in celery_defaults._TO_NEW_KEY.items()
    } == celery_settings.OLD_NAMES


def test_upper_case_hint_falls_back_to_lower_case() -> None:
    assert new_setting_name("MY_FLAG") == "my_flag"
    assert new_setting_name("Task_Default_Queue") == "task_default_queue"


@pytest.mark.parametrize("name", ["", 5, None, ("a",)])
def test_a_setting_name_that_is_not_a_string_is_refused(name: Any) -> None:
    conf = Settings()
    with pytest.raises(ImproperlyConfigured, match="setting names are non-empty strings"):
        conf[name] = 1


# -- validation ------------------------------------------------------------------------------

# For every validated setting: a value that cannot work, and what the message says to write.
BAD_VALUES: dict[str, tuple[Any, str]] = {
    "broker_url": ("localhost:6379", "write a URL such as redis://"),
    "broker_transport_options": (["x"], "write a dict"),
    "broker_connection_retry": ("yes", "write True or False"),
    "broker_use_ssl": ("/ca.pem", "write True or a dict"),
    "task_default_queue_type": ("stream", "use 'classic' or 'quorum'"),
    "task_create_missing_queue_type": ("stream", "use 'classic' or 'quorum'"),
    "security_key": (1, "write a string or None"),
    "security_key_password": (1, "write a string, bytes or None"),
    "security_certificate": (1, "write a string or None"),
    "security_cert_store": (1, "write a string or None"),
    "security_digest": ("", "write a hash name"),
    "redis_backend_use_ssl": (1, "write True or a dict"),
    "broker_connection_max_retries": (-1, "whole number >= 0"),
    "broker_connection_timeout": ("4s", "number of seconds"),
    "broker_heartbeat": (-5, "number of seconds"),
    "result_backend": (42, "write a URL"),
    "result_backend_transport_options": ("a=1", "write a dict"),
    "result_serializer": ("yaml", "use one of json, msgpack, pickle"),
    "result_accept_content": ("json", "write a list"),
    "result_expires": (float("nan"), "number of seconds"),
    "result_extended": (1, "write True or False"),
    "result_backend_max_retry_time": (True, "number of seconds"),
    "task_serializer": ("xml", "use one of json, msgpack, pickle"),
    "accept_content": (["json", "yaml"], "accept_content lists 'yaml'"),
    "task_compression": ("brotli", "use zlib, bzip2 or lzma"),
    "task_default_queue": ("", "queue name"),
    "task_default_exchange": (5, "string or None"),
    "task_default_routing_key": (b"rk", "string or None"),
    "task_default_priority": (256, "priority 0-9"),
    "task_queue_max_priority": (-1, "priority 0-9"),
    "task_routes": (5, "write a dict"),
    "task_create_missing_queues": (None, "write True or False"),
    "task_inherit_parent_priority": ("false", "write True or False"),
    "task_queues": ("celery", "write a list of kombu.Queue(...) objects"),
    "task_annotations": (5, "write a dict keyed by task name"),
    "task_reject_on_worker_lost": ("yes", "write True or False"),
    "task_acks_late": (0, "write True or False"),
    "task_acks_on_failure_or_timeout": ("", "write True or False"),
    "task_time_limit": (float("inf"), "number of seconds"),
    "task_soft_time_limit": ("10", "number of seconds"),
    "task_ignore_result": ("no", "write True or False"),
    "task_store_errors_even_if_ignored": (1, "write True or False"),
    "task_track_started": ([], "write True or False"),
    "task_default_rate_limit": ("10/fortnight", "use s, m or h"),
    "task_always_eager": ("on", "write True or False"),
    "task_eager_propagates": (1, "write True or False"),
    "task_store_eager_result": (1, "write True or False"),
    "task_publish_retry": (1, "write True or False"),
    "task_publish_retry_policy": (3, "write a dict"),
    "task_max_message_size": (1.5, "whole number >= 0"),
    "task_redelivery_limit": (None, "whole number >= 0"),
    "worker_concurrency": ("4", "whole number >= 0 or None"),
    "worker_pool": ("eventlet", "eventlet is deprecated by its own maintainers"),
    "worker_prefetch_multiplier": (None, "whole number >= 0"),
    "worker_max_tasks_per_child": (-1, "whole number"),
    "worker_max_memory_per_child": (2.5, "whole number"),
    "worker_disable_rate_limits": (1, "write True or False"),
    "worker_send_task_events": (1, "write True or False"),
    "worker_enable_remote_control": ("yes", "write True or False"),
    "task_send_sent_event": (1, "write True or False"),
    "worker_hijack_root_logger": (1, "write True or False"),
    "worker_lost_after": (0, "number of seconds >= 1"),
    "timezone": (0, "string or None"),
    "enable_utc": ("UTC", "write True or False"),
    "include": ([1], "list of module names"),
    "imports": (5, "list of module names"),
    "beat_schedule": ([], "write a dict"),
    "task_cls": (dict, "subclass of celeriac.Task"),
    "beat_schedule_filename": ("", "write a name"),
    "beat_scheduler": (3, "dotted path"),
    "beat_max_loop_interval": (-1, "number of seconds"),
    "beat_cron_starting_deadline": ("1h", "number of seconds"),
    "beat_catch_up": ("yes", "write True or False"),
    "beat_lease_seconds": (0, "seconds > 0"),
}


def test_every_validated_setting_has_a_bad_value_case() -> None:
    assert set(BAD_VALUES) == set(setting_checks.VALIDATORS)


@pytest.mark.parametrize(("name", "case"), sorted(BAD_VALUES.items()))
def test_bad_value_is_refused_saying_what_to_write(name: str, case: tuple[Any, str]) -> None:
    value, hint = case
    with pytest.raises(ImproperlyConfigured, match=re.escape(hint)) as raised:
        Settings({name: value})
    if name not in ("accept_content", "task_default_rate_limit"):
        assert f"setting {name}=" in str(raised.value)


@pytest.mark.parametrize("name", ["task_time_limit", "result_expires", "broker_heartbeat"])
def test_seconds_settings_take_a_timedelta(name: str) -> None:
    assert Settings({name: timedelta(minutes=2)})[name] == 120.0


def test_module_lists_take_one_name_a_list_or_a_generator() -> None:
    conf = Settings({"imports": "proj.tasks", "include": (m for m in ["a.tasks", "b.tasks"])})
    assert conf.imports == ("proj.tasks",)
    assert conf.include == ("a.tasks", "b.tasks")


def test_accept_content_takes_names_and_mime_types() -> None:
    conf = Settings({"accept_content": ("json", "application/x-msgpack")})
    assert conf.accept_content == ["json", "application/x-msgpack"]


def test_result_accept_content_error_names_that_setting() -> None:
    with pytest.raises(ImproperlyConfigured, match="result_accept_content lists 'jsno'"):
        Settings({"result_accept_content": ["jsno"]})


def test_transport_options_of_none_become_an_empty_dict() -> None:
    assert Settings({"broker_transport_options": None}).broker_transport_options == {}


@pytest.mark.parametrize(
    "routes",
    [
        {"proj.*": {"queue": "q"}},
        "proj.routers.route",
        [{"a": "q"}, "proj.routers.route", lambda *a, **k: None],
        [[("proj.*", {"queue": "q"}), ("x", "y")]],
    ],
)
def test_task_routes_accepts_celerys_forms(routes: Any) -> None:
    Settings({"task_routes": routes})


def test_task_routes_refuses_a_list_of_odd_things() -> None:
    with pytest.raises(ImproperlyConfigured, match="task_routes"):
        Settings({"task_routes": [5]})


def test_rate_limit_setting_is_checked_when_set() -> None:
    assert Settings({"task_default_rate_limit": "10/m"}).task_default_rate_limit == "10/m"


# -- environment -------------------------------------------------------------------------------

ENVIRONMENT_NAMES = (
    "CELERIAC_BROKER_URL",
    "CELERY_BROKER_URL",
    "CELERIAC_RESULT_BACKEND",
    "CELERY_RESULT_BACKEND",
)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENVIRONMENT_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_broker_url_is_the_setting_without_environment(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    conf = Settings({"broker_url": "redis://127.0.0.1:6379/0"})
    assert conf.broker_url_resolved() == "redis://127.0.0.1:6379/0"
    assert Settings().broker_url_resolved() is None


def test_celeriac_broker_url_environment_overrides_the_setting(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    clean_environment.setenv("CELERIAC_BROKER_URL", "amqp://127.0.0.1:5672//")
    conf = Settings({"broker_url": "redis://127.0.0.1:6379/0"})
    assert conf.broker_url_resolved() == "amqp://127.0.0.1:5672//"


def test_celery_broker_url_environment_is_read_too(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/3")
    assert Settings().broker_url_resolved() == "redis://127.0.0.1:6379/3"


def test_celeriac_environment_wins_over_celerys(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/3")
    clean_environment.setenv("CELERIAC_BROKER_URL", "redis://127.0.0.1:6379/4")
    assert Settings().broker_url_resolved() == "redis://127.0.0.1:6379/4"


def test_empty_environment_variable_is_ignored(clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("CELERIAC_BROKER_URL", "")
    conf = Settings({"broker_url": "memory://"})
    assert conf.broker_url_resolved() == "memory://"


def test_celeriac_result_backend_environment_overrides_the_setting(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    clean_environment.setenv("CELERIAC_RESULT_BACKEND", "redis://127.0.0.1:6379/1")
    conf = Settings({"result_backend": "memory://"})
    assert conf.result_backend_resolved() == "redis://127.0.0.1:6379/1"


def test_celery_result_backend_environment_is_read_too(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    clean_environment.setenv("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/2")
    assert Settings().result_backend_resolved() == "redis://127.0.0.1:6379/2"


@pytest.mark.parametrize("variable", ENVIRONMENT_NAMES)
def test_environment_value_that_is_not_a_url_is_refused(
    clean_environment: pytest.MonkeyPatch, variable: str
) -> None:
    clean_environment.setenv(variable, "localhost:6379")
    conf = Settings()
    resolve = conf.broker_url_resolved if "BROKER" in variable else conf.result_backend_resolved
    with pytest.raises(ImproperlyConfigured, match=f"{variable}='localhost:6379' is not a URL"):
        resolve()


def test_django_db_is_read_as_its_url() -> None:
    # Celery compat: django-celery-results' spelling, without "://".
    assert Settings({"result_backend": "django-db"}).result_backend == "django-db://"
