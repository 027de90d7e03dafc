"""celeriac: a distributed task queue with Celery's API and wire protocol."""

from celeriac._version import __version__ as __version__

__all__ = ["__version__"]
