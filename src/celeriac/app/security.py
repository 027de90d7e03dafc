"""`app.setup_security()`: sign every task message this process sends and accept only
signed ones, with Celery's settings and checks (the format is in `protocol/signing.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeriac.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from celeriac.app.config import Settings

__all__ = ["setup_security"]


def _read(path: str, setting: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ImproperlyConfigured(f"{setting}: cannot read {path}: {exc}") from exc


def setup_security(
    conf: Settings,
    *,
    allowed_serializers: object = None,
    key: str | None = None,
    key_password: str | bytes | None = None,
    cert: str | None = None,
    store: str | None = None,
    digest: str | None = None,
    serializer: str = "json",
) -> None:
    """Set up the `auth` serializer from the arguments or the `security_*` settings.

    Raises:
        ImproperlyConfigured: task_serializer is not "auth", accept_content is not
            ["auth"], a file is missing or unusable, or `cryptography` is not installed.
    """
    from celeriac.protocol.signing import register_auth

    if allowed_serializers is not None:
        raise ImproperlyConfigured(
            "setup_security(allowed_serializers=...) is not supported: task messages "
            "decode only as accept_content allows (['auth']); set result_accept_content "
            "for results"
        )
    if conf.task_serializer != "auth" or list(conf.accept_content) != ["auth"]:
        raise ImproperlyConfigured(
            "signed messages need task_serializer = 'auth' and accept_content = ['auth'] "
            "(accepting anything else would let unsigned tasks run)"
        )
    key = key or conf.security_key
    cert = cert or conf.security_certificate
    store = store or conf.security_cert_store
    missing = [
        name
        for name, value in (
            ("security_key", key),
            ("security_certificate", cert),
            ("security_cert_store", store),
        )
        if not value
    ]
    if missing:
        raise ImproperlyConfigured(f"setup_security needs {', '.join(missing)}")
    assert key is not None
    assert cert is not None
    assert store is not None
    password = key_password or conf.security_key_password
    register_auth(
        key=_read(key, "security_key"),
        key_password=password.encode("utf-8") if isinstance(password, str) else password,
        certificate=_read(cert, "security_certificate"),
        store=store,
        digest=digest or conf.security_digest,
        serializer=serializer,
    )
