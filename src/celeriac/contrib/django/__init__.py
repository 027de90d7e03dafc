"""Django support: add `"celeriac.contrib.django"` to `INSTALLED_APPS` for the ORM result
backend (`CELERY_RESULT_BACKEND = "django-db"`) and its admin pages.

The fix-up (`fixup.py`) needs no installed app: it is applied whenever
`DJANGO_SETTINGS_MODULE` is set where the app is made, as Celery does. Nothing in this
package imports Django at import time.
"""
