"""Django's usual `proj/celery.py`: only the import differs from Celery's."""

import os

from celeriac import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

app = Celery("mysite")
# Every CELERY_* setting of settings.py, without the prefix.
app.config_from_object("django.conf:settings", namespace="CELERY")
# tasks.py of every installed app.
app.autodiscover_tasks()
