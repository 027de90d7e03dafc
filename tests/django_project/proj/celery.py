"""Django's canonical `proj/celery.py`, with only the import changed."""

from __future__ import annotations

import os

from celeriac import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")

if os.environ.get("TEST_DISCOVERY") == "lambda":
    # The older documented form: evaluated when the worker imports task modules.
    from django.conf import settings

    app.autodiscover_tasks(lambda: settings.INSTALLED_APPS)
else:
    app.autodiscover_tasks()
