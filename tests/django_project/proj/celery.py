"""Django's canonical `proj/celery.py`, with only the import changed."""

from __future__ import annotations

import os

from celeriac import Celery
from celeriac.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")

if os.environ.get("TEST_DISCOVERY") == "lambda":
    # The older documented form: evaluated when the worker imports task modules.
    from django.conf import settings

    app.autodiscover_tasks(lambda: settings.INSTALLED_APPS)
else:
    app.autodiscover_tasks()


# What a new prefork child holds once the worker's own start-up hooks have run (the test
# checks that no connection of the supervisor's reaches it).
child_started_with_connection: bool | None = None


@worker_process_init.connect
def _note_inherited_connection(**kwargs: object) -> None:
    global child_started_with_connection
    from django.db import connection

    child_started_with_connection = connection.connection is not None
