"""Celery's `celery.utils` import paths that task modules use (`celeriac.utils.log`).

Only what user code imports from Celery lives here; celeriac's own helpers do not.
"""
