"""Throwaway RSA keys and self-signed certificates for the message-signing tests, made
with `cryptography` in the test (never checked in)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Identity", "make_identity"]


@dataclass(frozen=True)
class Identity:
    """A signer: its key and certificate files."""

    key: Path
    certificate: Path


def make_identity(directory: Path, name: str, *, days: float = 1.0) -> Identity:
    """An RSA key and a self-signed certificate for `name`, valid for `days` (negative:
    already expired), written to `directory/<name>.key` and `<name>.pem`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "celeriac tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    start = min(now, now + datetime.timedelta(days=days)) - datetime.timedelta(days=1)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    key_path = directory / f"{name}.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    certificate_path = directory / f"{name}.pem"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return Identity(key_path, certificate_path)
