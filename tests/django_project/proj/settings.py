"""Settings of the test project: the database and broker come from the environment."""

from __future__ import annotations

import os
from urllib.parse import urlparse

SECRET_KEY = "test-only"
DEBUG = False
USE_TZ = os.environ.get("TEST_USE_TZ", "1") == "1"
TIME_ZONE = os.environ.get("TEST_TIME_ZONE", "America/New_York")
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "celeriac.contrib.django",
    "orders",
    "billing.apps.BillingConfig",
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _database(url: str) -> dict[str, object]:
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": parsed.path}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parsed.path.lstrip("/"),
        "USER": parsed.username or "",
        "PASSWORD": parsed.password or "",
        "HOST": parsed.hostname or "",
        "PORT": str(parsed.port or ""),
    }


DATABASES = {"default": _database(os.environ["TEST_DATABASE_URL"])}

CELERY_BROKER_URL = os.environ["TEST_BROKER_URL"]
CELERY_RESULT_BACKEND = "django-db"
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("TEST_QUEUE", "celery")
CELERY_RESULT_EXTENDED = True
