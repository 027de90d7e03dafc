"""`celeriac.worker.startup`: what the worker prints about its servers hides secrets."""

from __future__ import annotations

from celeriac import Celeriac
from celeriac.worker.options import WorkerOptions
from celeriac.worker.pools.solo import SoloPool
from celeriac.worker.startup import Worker


def test_the_banner_hides_passwords_of_every_url_and_tls_key_passwords() -> None:
    app = Celeriac(
        "banner",
        broker="rediss://:brokerpw@h1:6380/0?ssl_password=keypw&ssl_cert_reqs=required",
        backend="sentinel://:backendpw@s1:26379/1;sentinel://:otherpw@s2:26379/1",
        broker_transport_options={"sentinel_kwargs": {"password": "sentinelpw"}},
    )
    options = WorkerOptions.resolve(app, pool="solo", hostname="w@h")
    worker = Worker(app, options)
    banner = worker.banner(SoloPool(app, options))
    for secret in ("brokerpw", "keypw", "backendpw", "otherpw", "sentinelpw"):
        assert secret not in banner
    assert "rediss://:***@h1:6380/0?ssl_password=***&ssl_cert_reqs=required" in banner
    assert "sentinel://:***@s1:26379/1;sentinel://:***@s2:26379/1" in banner
