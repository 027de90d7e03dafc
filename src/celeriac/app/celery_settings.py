"""Celery's settings, and how celeriac treats each one it does not honour.

Three tables, checked against Celery 5.7's own list by the tests (so a new Celery setting
is noticed):

- `OLD_NAMES`: every setting's Celery 3 upper-case name (`BROKER_URL` → `broker_url`),
  read as Celery 5 reads them, with a `CDeprecationWarning` naming the new name.
- `UNSUPPORTED`: the settings celeriac does not honour, each with what to do instead.
  Setting one is refused (`ImproperlyConfigured`), unless the value asks for what
  celeriac does anyway (`ACCEPTED_VALUES`).
- `FIXED`: settings kept readable at the one value celeriac follows (another value is
  refused).
- The honoured settings are the rest of `celeriac.app.config.DEFAULTS`.

`docs/migrating-from-celery.md` is generated from these tables (`scripts/gen_migrating.py`,
checked by a test).
"""

from __future__ import annotations

import difflib
from typing import Any

__all__ = [
    "ACCEPTED_VALUES",
    "APP_ARGUMENTS",
    "CELERY_PREFIXES",
    "FIXED",
    "OLD_NAMES",
    "UNSUPPORTED",
    "closest_setting",
    "new_name_of",
]

# Each setting's Celery 3 (upper-case) name, as Celery 5.7 maps them.
# fmt: off
OLD_NAMES: dict[str, str] = {
    "accept_content": "CELERY_ACCEPT_CONTENT",
    "arangodb_backend_settings": "CELERY_ARANGODB_BACKEND_SETTINGS",
    "azureblockblob_base_path": "AZUREBLOCKBLOB_BASE_PATH",
    "azureblockblob_connection_timeout": "AZUREBLOCKBLOB_CONNECTION_TIMEOUT",
    "azureblockblob_container_name": "AZUREBLOCKBLOB_CONTAINER_NAME",
    "azureblockblob_read_timeout": "AZUREBLOCKBLOB_READ_TIMEOUT",
    "azureblockblob_retry_increment_base": "AZUREBLOCKBLOB_RETRY_INCREMENT_BASE",
    "azureblockblob_retry_initial_backoff_sec": "AZUREBLOCKBLOB_RETRY_INITIAL_BACKOFF_SEC",
    "azureblockblob_retry_max_attempts": "AZUREBLOCKBLOB_RETRY_MAX_ATTEMPTS",
    "beat_cron_starting_deadline": "CELERYBEAT_CRON_STARTING_DEADLINE",
    "beat_enable_remote_control": "CELERYBEAT_ENABLE_REMOTE_CONTROL",
    "beat_max_loop_interval": "CELERYBEAT_MAX_LOOP_INTERVAL",
    "beat_remote_control_max_tick_age": "CELERYBEAT_REMOTE_CONTROL_MAX_TICK_AGE",
    "beat_schedule": "CELERYBEAT_SCHEDULE",
    "beat_schedule_filename": "CELERYBEAT_SCHEDULE_FILENAME",
    "beat_scheduler": "CELERYBEAT_SCHEDULER",
    "beat_sync_every": "CELERYBEAT_SYNC_EVERY",
    "broker_channel_error_retry": "BROKER_CHANNEL_ERROR_RETRY",
    "broker_connection_max_retries": "BROKER_CONNECTION_MAX_RETRIES",
    "broker_connection_retry": "BROKER_CONNECTION_RETRY",
    "broker_connection_retry_on_startup": "BROKER_CONNECTION_RETRY_ON_STARTUP",
    "broker_connection_timeout": "BROKER_CONNECTION_TIMEOUT",
    "broker_failover_strategy": "BROKER_FAILOVER_STRATEGY",
    "broker_heartbeat": "BROKER_HEARTBEAT",
    "broker_heartbeat_checkrate": "BROKER_HEARTBEAT_CHECKRATE",
    "broker_host": "BROKER_HOST",
    "broker_login_method": "BROKER_LOGIN_METHOD",
    "broker_native_delayed_delivery_queue_type": "BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE",
    "broker_password": "BROKER_PASSWORD",
    "broker_pool_acquire_timeout": "BROKER_POOL_ACQUIRE_TIMEOUT",
    "broker_pool_limit": "BROKER_POOL_LIMIT",
    "broker_port": "BROKER_PORT",
    "broker_read_url": "BROKER_READ_URL",
    "broker_transport": "BROKER_TRANSPORT",
    "broker_transport_options": "BROKER_TRANSPORT_OPTIONS",
    "broker_url": "BROKER_URL",
    "broker_use_ssl": "BROKER_USE_SSL",
    "broker_user": "BROKER_USER",
    "broker_vhost": "BROKER_VHOST",
    "broker_write_url": "BROKER_WRITE_URL",
    "cache_backend": "CELERY_CACHE_BACKEND",
    "cache_backend_options": "CELERY_CACHE_BACKEND_OPTIONS",
    "cassandra_auth_kwargs": "CASSANDRA_AUTH_KWARGS",
    "cassandra_auth_provider": "CASSANDRA_AUTH_PROVIDER",
    "cassandra_bundle_path": "CASSANDRA_BUNDLE_PATH",
    "cassandra_entry_ttl": "CASSANDRA_ENTRY_TTL",
    "cassandra_keyspace": "CASSANDRA_KEYSPACE",
    "cassandra_options": "CASSANDRA_OPTIONS",
    "cassandra_port": "CASSANDRA_PORT",
    "cassandra_read_consistency": "CASSANDRA_READ_CONSISTENCY",
    "cassandra_servers": "CASSANDRA_SERVERS",
    "cassandra_table": "CASSANDRA_TABLE",
    "cassandra_write_consistency": "CASSANDRA_WRITE_CONSISTENCY",
    "control_exchange": "CONTROL_EXCHANGE",
    "control_queue_durable": "CONTROL_QUEUE_DURABLE",
    "control_queue_exclusive": "CONTROL_QUEUE_EXCLUSIVE",
    "control_queue_expires": "CONTROL_QUEUE_EXPIRES",
    "control_queue_ttl": "CONTROL_QUEUE_TTL",
    "cosmosdbsql_collection_name": "COSMOSDBSQL_COLLECTION_NAME",
    "cosmosdbsql_consistency_level": "COSMOSDBSQL_CONSISTENCY_LEVEL",
    "cosmosdbsql_database_name": "COSMOSDBSQL_DATABASE_NAME",
    "cosmosdbsql_max_retry_attempts": "COSMOSDBSQL_MAX_RETRY_ATTEMPTS",
    "cosmosdbsql_max_retry_wait_time": "COSMOSDBSQL_MAX_RETRY_WAIT_TIME",
    "couchbase_backend_settings": "CELERY_COUCHBASE_BACKEND_SETTINGS",
    "database_create_tables_at_setup": "DATABASE_CREATE_TABLES_AT_SETUP",
    "database_engine_callback": "DATABASE_ENGINE_CALLBACK",
    "database_engine_options": "CELERY_RESULT_ENGINE_OPTIONS",
    "database_short_lived_sessions": "CELERY_RESULT_DB_SHORT_LIVED_SESSIONS",
    "database_table_names": "CELERY_RESULT_DB_TABLENAMES",
    "database_table_schemas": "DATABASE_TABLE_SCHEMAS",
    "database_url": "CELERY_RESULT_DBURI",
    "elasticsearch_max_retries": "CELERY_ELASTICSEARCH_MAX_RETRIES",
    "elasticsearch_retry_on_timeout": "CELERY_ELASTICSEARCH_RETRY_ON_TIMEOUT",
    "elasticsearch_save_meta_as_text": "CELERY_ELASTICSEARCH_SAVE_META_AS_TEXT",
    "elasticsearch_timeout": "CELERY_ELASTICSEARCH_TIMEOUT",
    "enable_utc": "ENABLE_UTC",
    "event_exchange": "CELERY_EVENT_EXCHANGE",
    "event_queue_durable": "CELERY_EVENT_QUEUE_DURABLE",
    "event_queue_exclusive": "CELERY_EVENT_QUEUE_EXCLUSIVE",
    "event_queue_expires": "CELERY_EVENT_QUEUE_EXPIRES",
    "event_queue_prefix": "CELERY_EVENT_QUEUE_PREFIX",
    "event_queue_ttl": "CELERY_EVENT_QUEUE_TTL",
    "event_serializer": "CELERY_EVENT_SERIALIZER",
    "gcs_base_path": "GCS_BASE_PATH",
    "gcs_bucket": "GCS_BUCKET",
    "gcs_project": "GCS_PROJECT",
    "gcs_ttl": "GCS_TTL",
    "imports": "CELERY_IMPORTS",
    "include": "CELERY_INCLUDE",
    "mongodb_backend_settings": "CELERY_MONGODB_BACKEND_SETTINGS",
    "redis_backend_use_ssl": "CELERY_REDIS_BACKEND_USE_SSL",
    "redis_db": "CELERY_REDIS_DB",
    "redis_host": "CELERY_REDIS_HOST",
    "redis_max_connections": "CELERY_REDIS_MAX_CONNECTIONS",
    "redis_password": "CELERY_REDIS_PASSWORD",
    "redis_port": "CELERY_REDIS_PORT",
    "redis_retry_on_timeout": "CELERY_REDIS_RETRY_ON_TIMEOUT",
    "redis_socket_connect_timeout": "CELERY_REDIS_SOCKET_CONNECT_TIMEOUT",
    "redis_socket_keepalive": "CELERY_REDIS_SOCKET_KEEPALIVE",
    "redis_socket_timeout": "CELERY_REDIS_SOCKET_TIMEOUT",
    "redis_username": "CELERY_REDIS_USERNAME",
    "result_accept_content": "RESULT_ACCEPT_CONTENT",
    "result_backend": "CELERY_RESULT_BACKEND",
    "result_backend_always_retry": "CELERY_RESULT_BACKEND_ALWAYS_RETRY",
    "result_backend_base_sleep_between_retries_ms": "CELERY_RESULT_BACKEND_BASE_SLEEP_BETWEEN_RETRIES_MS",  # noqa: E501
    "result_backend_max_retries": "CELERY_RESULT_BACKEND_MAX_RETRIES",
    "result_backend_max_sleep_between_retries_ms": "CELERY_RESULT_BACKEND_MAX_SLEEP_BETWEEN_RETRIES_MS",  # noqa: E501
    "result_backend_transport_options": "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS",
    "result_cache_max": "CELERY_MAX_CACHED_RESULTS",
    "result_chord_expires": "CELERY_RESULT_CHORD_EXPIRES",
    "result_chord_join_timeout": "CELERY_RESULT_CHORD_JOIN_TIMEOUT",
    "result_chord_retry_interval": "CELERY_RESULT_CHORD_RETRY_INTERVAL",
    "result_compression": "CELERY_RESULT_COMPRESSION",
    "result_exchange": "CELERY_RESULT_EXCHANGE",
    "result_exchange_type": "CELERY_RESULT_EXCHANGE_TYPE",
    "result_expires": "CELERY_TASK_RESULT_EXPIRES",
    "result_extended": "CELERY_RESULT_EXTENDED",
    "result_failure_expires": "CELERY_RESULT_FAILURE_EXPIRES",
    "result_persistent": "CELERY_RESULT_PERSISTENT",
    "result_serializer": "CELERY_RESULT_SERIALIZER",
    "s3_access_key_id": "S3_ACCESS_KEY_ID",
    "s3_base_path": "S3_BASE_PATH",
    "s3_bucket": "S3_BUCKET",
    "s3_endpoint_url": "S3_ENDPOINT_URL",
    "s3_region": "S3_REGION",
    "s3_secret_access_key": "S3_SECRET_ACCESS_KEY",
    "security_cert_store": "CELERY_SECURITY_CERT_STORE",
    "security_certificate": "CELERY_SECURITY_CERTIFICATE",
    "security_digest": "CELERY_SECURITY_DIGEST",
    "security_key": "CELERY_SECURITY_KEY",
    "security_key_password": "CELERY_SECURITY_KEY_PASSWORD",
    "task_acks_late": "CELERY_ACKS_LATE",
    "task_acks_on_failure": "CELERY_ACKS_ON_FAILURE",
    "task_acks_on_failure_or_timeout": "CELERY_ACKS_ON_FAILURE_OR_TIMEOUT",
    "task_acks_on_timeout": "CELERY_ACKS_ON_TIMEOUT",
    "task_allow_error_cb_on_chord_header": "CELERY_ALLOW_ERROR_CB_ON_CHORD_HEADER",
    "task_always_eager": "CELERY_ALWAYS_EAGER",
    "task_annotations": "CELERY_ANNOTATIONS",
    "task_compression": "CELERY_MESSAGE_COMPRESSION",
    "task_create_missing_queue_exchange_type": "CELERY_CREATE_MISSING_QUEUE_EXCHANGE_TYPE",
    "task_create_missing_queue_type": "CELERY_CREATE_MISSING_QUEUE_TYPE",
    "task_create_missing_queues": "CELERY_CREATE_MISSING_QUEUES",
    "task_default_delivery_mode": "CELERY_DEFAULT_DELIVERY_MODE",
    "task_default_exchange": "CELERY_DEFAULT_EXCHANGE",
    "task_default_exchange_type": "CELERY_DEFAULT_EXCHANGE_TYPE",
    "task_default_priority": "CELERY_DEFAULT_PRIORITY",
    "task_default_queue": "CELERY_DEFAULT_QUEUE",
    "task_default_queue_type": "CELERY_DEFAULT_QUEUE_TYPE",
    "task_default_rate_limit": "CELERY_DEFAULT_RATE_LIMIT",
    "task_default_routing_key": "CELERY_DEFAULT_ROUTING_KEY",
    "task_eager_propagates": "CELERY_EAGER_PROPAGATES_EXCEPTIONS",
    "task_ignore_result": "CELERY_IGNORE_RESULT",
    "task_inherit_parent_priority": "CELERY_INHERIT_PARENT_PRIORITY",
    "task_protocol": "CELERY_TASK_PROTOCOL",
    "task_publish_retry": "CELERY_TASK_PUBLISH_RETRY",
    "task_publish_retry_policy": "CELERY_TASK_PUBLISH_RETRY_POLICY",
    "task_queue_max_priority": "CELERY_QUEUE_MAX_PRIORITY",
    "task_queues": "CELERY_QUEUES",
    "task_reject_on_worker_lost": "CELERY_REJECT_ON_WORKER_LOST",
    "task_remote_tracebacks": "CELERY_REMOTE_TRACEBACKS",
    "task_repr_maxlevels": "CELERY_REPR_MAXLEVELS",
    "task_retry_on_worker_lost": "CELERY_RETRY_ON_WORKER_LOST",
    "task_routes": "CELERY_ROUTES",
    "task_send_sent_event": "CELERY_SEND_TASK_SENT_EVENT",
    "task_serializer": "CELERY_TASK_SERIALIZER",
    "task_soft_time_limit": "CELERYD_TASK_SOFT_TIME_LIMIT",
    "task_store_eager_result": "CELERY_STORE_EAGER_RESULT",
    "task_store_errors_even_if_ignored": "CELERY_STORE_ERRORS_EVEN_IF_IGNORED",
    "task_time_limit": "CELERYD_TASK_TIME_LIMIT",
    "task_track_started": "CELERY_TRACK_STARTED",
    "timezone": "CELERY_TIMEZONE",
    "worker_agent": "CELERYD_AGENT",
    "worker_autoscaler": "CELERYD_AUTOSCALER",
    "worker_cancel_long_running_tasks_on_connection_loss": "CELERYD_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS",  # noqa: E501
    "worker_concurrency": "CELERYD_CONCURRENCY",
    "worker_consumer": "CELERYD_CONSUMER",
    "worker_deduplicate_successful_tasks": "CELERYD_DEDUPLICATE_SUCCESSFUL_TASKS",
    "worker_detect_quorum_queues": "CELERYD_DETECT_QUORUM_QUEUES",
    "worker_direct": "CELERY_WORKER_DIRECT",
    "worker_disable_prefetch": "CELERYD_DISABLE_PREFETCH",
    "worker_disable_rate_limits": "CELERY_DISABLE_RATE_LIMITS",
    "worker_enable_prefetch_count_reduction": "CELERYD_ENABLE_PREFETCH_COUNT_REDUCTION",
    "worker_enable_remote_control": "CELERY_ENABLE_REMOTE_CONTROL",
    "worker_enable_soft_shutdown_on_idle": "CELERYD_ENABLE_SOFT_SHUTDOWN_ON_IDLE",
    "worker_eta_task_limit": "CELERYD_ETA_TASK_LIMIT",
    "worker_hijack_root_logger": "CELERYD_HIJACK_ROOT_LOGGER",
    "worker_log_color": "CELERYD_LOG_COLOR",
    "worker_log_datefmt": "CELERYD_LOG_DATEFMT",
    "worker_log_format": "CELERYD_LOG_FORMAT",
    "worker_lost_wait": "CELERYD_WORKER_LOST_WAIT",
    "worker_max_memory_per_child": "CELERYD_MAX_MEMORY_PER_CHILD",
    "worker_max_tasks_per_child": "CELERYD_MAX_TASKS_PER_CHILD",
    "worker_pool": "CELERYD_POOL",
    "worker_pool_putlocks": "CELERYD_POOL_PUTLOCKS",
    "worker_pool_restarts": "CELERYD_POOL_RESTARTS",
    "worker_pool_start_method": "CELERYD_POOL_START_METHOD",
    "worker_prefetch_multiplier": "CELERYD_PREFETCH_MULTIPLIER",
    "worker_proc_alive_timeout": "CELERYD_PROC_ALIVE_TIMEOUT",
    "worker_redirect_stdouts": "CELERY_REDIRECT_STDOUTS",
    "worker_redirect_stdouts_level": "CELERY_REDIRECT_STDOUTS_LEVEL",
    "worker_send_task_events": "CELERY_SEND_EVENTS",
    "worker_soft_shutdown_timeout": "CELERYD_SOFT_SHUTDOWN_TIMEOUT",
    "worker_state_db": "CELERYD_STATE_DB",
    "worker_task_log_datefmt": "CELERYD_TASK_LOG_DATEFMT",
    "worker_task_log_format": "CELERYD_TASK_LOG_FORMAT",
    "worker_timer": "CELERYD_TIMER",
    "worker_timer_precision": "CELERYD_TIMER_PRECISION",
}
# fmt: on

_NEW_NAMES = {old: new for new, old in OLD_NAMES.items()}

# Advice shared by families of settings.
_BACKEND = (
    "celeriac stores results in Redis, SQLite or over RabbitMQ (rpc://) only; set "
    "result_backend to one of those URLs and remove this setting"
)
_NO_EVENTS = (
    "celeriac declares the broadcast and event queues as Celery does by default "
    "(docs/operations.md); remove the setting"
)
_IN_URL = (
    "put the connection details in broker_url (e.g. amqp://user:password@host:5672/vhost) "
    "and remove this setting"
)
_NO_BEAT = (
    "celeriac beat keeps its state in the broker and takes no remote control "
    "(docs/periodic-tasks.md); remove the setting"
)
_REDIS_BACKEND = (
    "put Redis result connection details in the result_backend URL "
    "(redis://:password@host:6379/0) or result_backend_transport_options"
)
_WORKER_FIXED = "celeriac's worker does not offer this; remove the setting"
_LOGGING = (
    "the worker's log format is fixed; configure logging yourself with "
    "worker_hijack_root_logger=False or the setup_logging signal"
)

# Celery settings celeriac does not honour: name -> what to do.
UNSUPPORTED: dict[str, str] = {
    "beat_enable_remote_control": _NO_BEAT,
    "beat_remote_control_max_tick_age": _NO_BEAT,
    "beat_sync_every": ("celeriac beat writes every run to its store at once; remove the setting"),
    "broker_channel_error_retry": (
        "celeriac reconnects on channel errors by itself; remove the setting"
    ),
    "broker_connection_retry_on_startup": (
        "a celeriac worker stops at once (exit 69) when the broker does not answer at "
        "start; let your process manager restart it, and remove the setting"
    ),
    "broker_failover_strategy": "celeriac connects to one broker URL; remove the setting",
    "broker_heartbeat_checkrate": "set broker_heartbeat only; remove the setting",
    "broker_host": _IN_URL,
    "broker_login_method": _IN_URL,
    "broker_native_delayed_delivery_queue_type": (
        "celeriac's RabbitMQ delay ladder uses its own queues; remove the setting"
    ),
    "broker_password": _IN_URL,
    "broker_pool_acquire_timeout": "celeriac sizes its connection pools itself; remove it",
    "broker_pool_limit": "celeriac sizes its connection pools itself; remove the setting",
    "broker_port": _IN_URL,
    "broker_read_url": "celeriac reads and writes through broker_url; remove the setting",
    "broker_transport": "the transport is the scheme of broker_url; remove the setting",
    "broker_user": _IN_URL,
    "broker_vhost": _IN_URL,
    "broker_write_url": "celeriac reads and writes through broker_url; remove the setting",
    "control_queue_durable": _NO_EVENTS,
    "control_queue_exclusive": _NO_EVENTS,
    "control_queue_expires": _NO_EVENTS,
    "control_queue_ttl": _NO_EVENTS,
    "event_queue_durable": _NO_EVENTS,
    "event_queue_exclusive": _NO_EVENTS,
    "event_queue_expires": _NO_EVENTS,
    "event_queue_prefix": _NO_EVENTS,
    "event_queue_ttl": _NO_EVENTS,
    "event_serializer": _NO_EVENTS,
    "redis_db": _REDIS_BACKEND,
    "redis_host": _REDIS_BACKEND,
    "redis_max_connections": _REDIS_BACKEND,
    "redis_password": _REDIS_BACKEND,
    "redis_port": _REDIS_BACKEND,
    "redis_retry_on_timeout": _REDIS_BACKEND,
    "redis_socket_connect_timeout": _REDIS_BACKEND,
    "redis_socket_keepalive": _REDIS_BACKEND,
    "redis_socket_timeout": _REDIS_BACKEND,
    "redis_username": _REDIS_BACKEND,
    "result_backend_always_retry": (
        "celeriac always retries result writes, for result_backend_max_retry_time "
        "seconds; remove the setting"
    ),
    "result_backend_base_sleep_between_retries_ms": (
        "celeriac retries result writes for result_backend_max_retry_time seconds; set that instead"
    ),
    "result_backend_max_retries": (
        "celeriac retries result writes for result_backend_max_retry_time seconds; set that instead"
    ),
    "result_backend_max_sleep_between_retries_ms": (
        "celeriac retries result writes for result_backend_max_retry_time seconds; set that instead"
    ),
    "result_cache_max": "celeriac does not cache results in the client; remove the setting",
    "result_chord_expires": "chord counters expire with result_expires; remove the setting",
    "result_chord_join_timeout": (
        "celeriac counts chord parts in the backend and never joins; remove the setting"
    ),
    "result_chord_retry_interval": (
        "celeriac counts chord parts in the backend (a stock Celery producer's "
        "celery.chord_unlock is retried every second); remove the setting"
    ),
    "result_compression": "results are stored uncompressed; remove the setting",
    "result_exchange": "the rpc:// backend replies to the caller's queue; remove the setting",
    "result_exchange_type": (
        "the rpc:// backend replies to the caller's queue; remove the setting"
    ),
    "result_failure_expires": "failures expire with result_expires; remove the setting",
    "result_persistent": "rpc:// replies are persistent messages; remove the setting",
    "task_acks_on_failure": "use task_acks_on_failure_or_timeout",
    "task_acks_on_timeout": "use task_acks_on_failure_or_timeout",
    "task_allow_error_cb_on_chord_header": (
        "an errback on a chord runs once for the chord; remove the setting"
    ),
    "task_create_missing_queue_exchange_type": (
        "missing queues get a direct exchange of their own name; remove the setting"
    ),
    "task_default_delivery_mode": "task messages are always persistent; remove the setting",
    "task_default_exchange_type": (
        "exchanges celeriac declares are direct exchanges; remove the setting"
    ),
    "task_protocol": "celeriac speaks task protocol 2 only; remove the setting",
    "task_remote_tracebacks": "remove the setting (tracebacks are stored as text)",
    "task_repr_maxlevels": "remove the setting",
    "task_retry_on_worker_lost": (
        "a task whose worker process died is delivered again up to task_redelivery_limit "
        "times; set that instead"
    ),
    "worker_agent": _WORKER_FIXED,
    "worker_cancel_long_running_tasks_on_connection_loss": (
        "a running task always finishes and its message is redelivered if the connection "
        "was lost; remove the setting"
    ),
    "worker_consumer": _WORKER_FIXED,
    "worker_deduplicate_successful_tasks": (
        "a redelivered copy of a finished task is always dropped; remove the setting"
    ),
    "worker_detect_quorum_queues": (
        "set task_default_queue_type = 'quorum' (RabbitMQ); remove the setting"
    ),
    "worker_direct": _WORKER_FIXED,
    "worker_disable_prefetch": "set worker_prefetch_multiplier=1 instead",
    "worker_enable_prefetch_count_reduction": _WORKER_FIXED,
    "worker_enable_soft_shutdown_on_idle": _WORKER_FIXED,
    "worker_eta_task_limit": (
        "celeriac keeps countdown/ETA tasks on the broker, not in the worker; remove it"
    ),
    "worker_log_color": _LOGGING,
    "worker_log_datefmt": _LOGGING,
    "worker_log_format": _LOGGING,
    "worker_lost_wait": _WORKER_FIXED,
    "worker_pool_putlocks": _WORKER_FIXED,
    "worker_pool_restarts": _WORKER_FIXED,
    "worker_pool_start_method": "prefork children are forked; remove the setting",
    "worker_proc_alive_timeout": _WORKER_FIXED,
    "worker_redirect_stdouts": (
        "task output goes to the worker's stdout/stderr as written; remove the setting"
    ),
    "worker_redirect_stdouts_level": (
        "task output goes to the worker's stdout/stderr as written; remove the setting"
    ),
    "worker_soft_shutdown_timeout": _WORKER_FIXED,
    "worker_state_db": (
        "revocations are kept in the result backend, not a state file; remove the setting"
    ),
    "worker_task_log_datefmt": _LOGGING,
    "worker_task_log_format": _LOGGING,
    "worker_timer": _WORKER_FIXED,
    "worker_timer_precision": _WORKER_FIXED,
}
for _prefix in (
    "azureblockblob_",
    "cache_backend",
    "cassandra_",
    "cosmosdbsql_",
    "database_",
    "elasticsearch_",
    "gcs_",
    "s3_",
    "arangodb_backend_settings",
    "couchbase_backend_settings",
    "mongodb_backend_settings",
):
    for _name in OLD_NAMES:
        if _name.startswith(_prefix):
            UNSUPPORTED.setdefault(_name, _BACKEND)

# Settings celeriac keeps readable (`app.conf.enable_utc`) at the one value it follows:
# another value is refused with the advice. name -> (accepted values, advice).
FIXED: dict[str, tuple[tuple[Any, ...], str]] = {
    "broker_connection_retry": (
        (True,),
        "celeriac always reconnects after a lost connection, within the time its broker "
        "allows (docs/redis.md, docs/rabbitmq.md)",
    ),
    "broker_connection_max_retries": (
        (100,),
        "celeriac bounds reconnection by time, not tries: set the broker's transport "
        "options (Redis connection_retry_backoff_max, RabbitMQ publish_retry_timeout)",
    ),
    "worker_autoscaler": (
        ("celery.worker.autoscale:Autoscaler",),
        "celeriac's autoscaler is Celery's default one (`worker --autoscale=max,min`); "
        "a class of your own is not supported",
    ),
}

# Values that ask for what celeriac does anyway: accepted without complaint.
ACCEPTED_VALUES: dict[str, tuple[Any, ...]] = {
    "beat_sync_every": (0, None),
    "task_protocol": (2,),
    "task_default_exchange_type": ("direct",),
    "task_default_delivery_mode": (2, "persistent"),
    "broker_connection_retry_on_startup": (False,),
    "worker_deduplicate_successful_tasks": (True,),
    "worker_direct": (False,),
    "worker_redirect_stdouts": (False,),
    "worker_pool_start_method": ("fork",),
    "worker_disable_prefetch": (False,),
    "result_persistent": (None, True),
    "worker_cancel_long_running_tasks_on_connection_loss": (False,),
}

# Arguments of `Celery(...)` that Celery keeps beside its settings: accepted as settings so
# `Celeriac(..., task_cls=...)` and `conf.task_cls` keep working.
APP_ARGUMENTS = frozenset({"task_cls"})

# The first word of every Celery setting name: a name of your own that starts with one
# of these is taken for a misspelt Celery setting and refused.
CELERY_PREFIXES = (
    "beat_",
    "broker_",
    "control_",
    "event_",
    "redis_",
    "result_",
    "security_",
    "task_",
    "worker_",
)


def new_name_of(old: str) -> str | None:
    """The current name of Celery 3 setting `old` (`BROKER_URL` → `broker_url`), if any."""
    return _NEW_NAMES.get(old)


def closest_setting(name: str, known: set[str] | frozenset[str]) -> str | None:
    """The known setting `name` is most likely a misspelling of, if one is close."""
    matches = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
    return matches[0] if matches else None
