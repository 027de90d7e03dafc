"""A Celery 3-style settings module, read unchanged (each old name warns with its new one).

`task_queues` uses kombu's classes when kombu is installed (it comes with Celery); any
objects with the same attributes work, so this example runs without it too.
"""

try:
    from kombu import Exchange, Queue
except ImportError:  # pragma: no cover - celeriac does not need kombu

    class Exchange:  # type: ignore[no-redef]
        def __init__(self, name: str, type: str = "direct") -> None:
            self.name, self.type = name, type

    class Queue:  # type: ignore[no-redef]
        def __init__(self, name: str, exchange: object = None, routing_key: str = "") -> None:
            self.name, self.exchange, self.routing_key = name, exchange, routing_key


CELERY_QUEUES = (
    Queue("default"),
    Queue("media", Exchange("media", type="topic"), routing_key="media.#"),
)
CELERY_DEFAULT_QUEUE = "default"
CELERY_ROUTES = {"tasks.thumbnail": {"queue": "media", "routing_key": "media.image"}}
CELERY_ANNOTATIONS = {"tasks.thumbnail": {"rate_limit": "100/s"}}
CELERY_TASK_SERIALIZER = "json"
