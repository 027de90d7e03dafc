"""The gevent pool refuses to start where gevent has not patched the process."""

from __future__ import annotations

import pytest

from celeriac import Celeriac
from celeriac.exceptions import ImproperlyConfigured
from celeriac.worker.options import WorkerOptions
from celeriac.worker.pools.gevent import GeventPool


def test_an_unpatched_process_is_refused_with_how_to_start_it() -> None:
    app = Celeriac("unpatched", broker="memory://")
    options = WorkerOptions.resolve(app, pool="gevent", hostname="w@h")
    with pytest.raises(ImproperlyConfigured, match=r"worker -P gevent"):
        GeventPool(app, options)


def test_the_eventlet_pool_is_refused_pointing_to_gevent() -> None:
    app = Celeriac("eventlet", broker="memory://")
    with pytest.raises(ImproperlyConfigured, match=r"deprecated.*use -P gevent"):
        WorkerOptions.resolve(app, pool="eventlet", hostname="w@h")
