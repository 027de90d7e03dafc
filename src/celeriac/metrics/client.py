"""The optional `prometheus_client` dependency: the check that it is installed."""

from __future__ import annotations

from celeriac.exceptions import ImproperlyConfigured

__all__ = ["CONTENT_TYPE", "require_client"]

# Prometheus' text exposition format, version 0.0.4 (what every Prometheus scrapes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def require_client() -> None:
    """Raise `ImproperlyConfigured` naming the extra when prometheus_client is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise ImproperlyConfigured(
            'metrics need prometheus_client: pip install "celeriac[metrics]"'
        ) from exc
