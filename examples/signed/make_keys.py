"""Make a private key and a self-signed certificate for the signed-tasks example.

In production the certificate comes from your own CA and the key stays on the machines
that send tasks; every worker's certificate store holds the certificates it trusts.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def make_keys(directory: Path, name: str = "producer") -> None:
    """Write `<name>.key`, `<name>.pem` and `trusted/<name>.pem` into `directory`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    (directory / "trusted").mkdir(parents=True, exist_ok=True)
    key_file = directory / f"{name}.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    (directory / f"{name}.pem").write_bytes(pem)
    (directory / "trusted" / f"{name}.pem").write_bytes(pem)


if __name__ == "__main__":
    make_keys(Path(__file__).resolve().parent / "keys")
