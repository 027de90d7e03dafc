"""Signed message bodies, in the format of Celery's `auth` serializer.

A signed body is the inner serializer's output (JSON by default) signed with the
sender's RSA private key (PSS padding, MGF1 and salt of maximum length, digest
`security_digest`) and packed as

    base64( base64(signer) SEP base64(signature) SEP content_type SEP content_encoding
            SEP body )

where SEP is the two bytes 00 01 (JSON never holds them unescaped) and `signer` is the
certificate's id: the values of its issuer's attributes joined by spaces, a space, and
its serial number. The message's own content type is `application/data`. A receiver
looks the signer up in its certificate store, checks the certificate has not expired,
verifies the signature over the body bytes, and only then decodes them. What is signed
is the body (arguments, kwargs, canvas); headers (the task name among them) are not,
as in Celery.

`cryptography` is imported here only (the `security` extra); the rest of celeriac
never needs it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import glob
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

from celeriac.exceptions import ImproperlyConfigured, SerializationError
from celeriac.protocol import serializers

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
    from cryptography.hazmat.primitives.hashes import HashAlgorithm
    from cryptography.x509 import Certificate as X509Certificate

__all__ = [
    "AUTH_CONTENT_TYPE",
    "SEPARATOR",
    "CertStore",
    "Signer",
    "certificate_id",
    "digest_algorithm",
    "is_set_up",
    "load_certificate",
    "register_auth",
]

# The content type and encoding of a signed message (Celery's registration of `auth`).
AUTH_CONTENT_TYPE = "application/data"
AUTH_CONTENT_ENCODING = "utf-8"
# Between the packed fields.
SEPARATOR = b"\x00\x01"
# Inner serializers a signed body may use: never pickle, signed or not.
INNER_CONTENT_TYPES = frozenset({"application/json", "application/x-msgpack"})
INSTALL_HINT = 'message signing needs cryptography: pip install "celeriac[security]"'


def _crypto() -> Any:
    try:
        import cryptography.hazmat.primitives.asymmetric.padding as padding
    except ImportError:
        raise ImproperlyConfigured(INSTALL_HINT) from None
    return padding


def _pss(digest: HashAlgorithm) -> Any:
    padding = _crypto()
    return padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.MAX_LENGTH)


def digest_algorithm(name: str) -> HashAlgorithm:
    """The hash named by `security_digest` ("sha256", "sha512", ...)."""
    _crypto()
    from cryptography.hazmat.primitives import hashes

    algorithm = getattr(hashes, str(name).upper(), None)
    if not (isinstance(algorithm, type) and issubclass(algorithm, hashes.HashAlgorithm)):
        raise ImproperlyConfigured(
            f"security_digest={name!r} is not a hash algorithm: use e.g. sha256 or sha512"
        )
    try:
        return algorithm()
    except TypeError as exc:  # needs a digest size (BLAKE2, SHAKE): not a PSS digest
        raise ImproperlyConfigured(f"security_digest={name!r} cannot sign: {exc}") from exc


def certificate_id(certificate: X509Certificate) -> str:
    """The id a signed message names its signer by (Celery's `Certificate.get_id`)."""
    issuer = " ".join(str(attribute.value) for attribute in certificate.issuer)
    return f"{issuer} {certificate.serial_number}"


def _has_expired(certificate: X509Certificate) -> bool:
    return datetime.datetime.now(datetime.timezone.utc) >= certificate.not_valid_after_utc


def load_certificate(pem: bytes, *, source: str) -> X509Certificate:
    """An RSA certificate from PEM text.

    Raises:
        ImproperlyConfigured: not a PEM certificate, or not an RSA one.
    """
    _crypto()
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{source} is not a PEM certificate: {exc}") from exc
    if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
        raise ImproperlyConfigured(f"{source}: only RSA certificates can sign (as in Celery)")
    return certificate


@final
class CertStore:
    """The certificates whose signatures are trusted, by id: every file matched by
    `security_cert_store` (a directory, a file or a glob pattern).

    Raises:
        ImproperlyConfigured: no certificate found, a file that is not one, an expired
            certificate, or two certificates with the same id.
    """

    def __init__(self, path: str) -> None:
        pattern = os.path.join(path, "*") if os.path.isdir(path) else path
        self._certificates: dict[str, X509Certificate] = {}
        for name in sorted(glob.glob(pattern)):
            with open(name, "rb") as file:
                certificate = load_certificate(file.read(), source=name)
            key = certificate_id(certificate)
            if _has_expired(certificate):
                raise ImproperlyConfigured(f"certificate {name} ({key}) has expired")
            if key in self._certificates:
                raise ImproperlyConfigured(f"certificate {name}: a second certificate {key!r}")
            self._certificates[key] = certificate
        if not self._certificates:
            raise ImproperlyConfigured(f"security_cert_store={path!r} holds no certificate")

    def __len__(self) -> int:
        return len(self._certificates)

    def public_key(self, signer: str) -> RSAPublicKey:
        """The key of `signer`'s certificate.

        Raises:
            SerializationError: unknown signer, or the certificate expired since.
        """
        certificate = self._certificates.get(signer)
        if certificate is None:
            raise SerializationError(f"signed by an unknown certificate {signer!r}")
        if _has_expired(certificate):
            raise SerializationError(f"signed with an expired certificate {signer!r}")
        key: RSAPublicKey = certificate.public_key()  # type: ignore[assignment]
        return key


@final
@dataclass(frozen=True, slots=True)
class Signer:
    """Signs bodies with one key and verifies them against a certificate store."""

    key: RSAPrivateKey
    signer_id: str
    store: CertStore
    digest: HashAlgorithm
    serializer: str = "json"

    def dumps(self, obj: Any) -> bytes:
        """Serialize `obj` with the inner serializer, sign the bytes and pack them."""
        body, content_type, content_encoding = serializers.dumps(obj, self.serializer)
        signature = self.key.sign(body, _pss(self.digest), self.digest)
        fields = SEPARATOR.join(
            (
                base64.b64encode(self.signer_id.encode("utf-8")),
                base64.b64encode(signature),
                content_type.encode("utf-8"),
                content_encoding.encode("utf-8"),
                body,
            )
        )
        return base64.b64encode(fields)

    def loads(self, data: bytes) -> Any:
        """Check the signature of a packed body, then decode it.

        Raises:
            SerializationError: not a signed body, an unknown or expired signer, a
                signature that does not match, or an inner content type not allowed.
        """
        from cryptography.exceptions import InvalidSignature

        try:
            fields = base64.b64decode(data, validate=True).split(SEPARATOR, 4)
            if len(fields) != 5:
                raise ValueError(f"{len(fields)} fields instead of 5")
            signer = base64.b64decode(fields[0], validate=True).decode("utf-8")
            signature = base64.b64decode(fields[1], validate=True)
            content_type = fields[2].decode("utf-8")
        except (binascii.Error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            raise SerializationError(f"not a signed message body: {exc}") from exc
        body = fields[4]
        key = self.store.public_key(signer)
        try:
            key.verify(signature, body, _pss(self.digest), self.digest)
        except InvalidSignature:
            raise SerializationError(
                f"bad signature: the body does not match the signature of {signer!r} "
                "(tampered with, or signed with another key or digest)"
            ) from None
        if content_type not in INNER_CONTENT_TYPES:
            raise SerializationError(
                f"signed body of content type {content_type!r}: only JSON or msgpack is decoded"
            )
        return serializers.loads(body, content_type, accept=INNER_CONTENT_TYPES)


def is_set_up() -> bool:
    """True once `register_auth` made the `auth` serializer usable in this process."""
    return serializers.get_serializer("auth").dumps is not serializers.auth_not_set_up


def register_auth(
    *,
    key: bytes,
    key_password: bytes | None,
    certificate: bytes,
    store: str,
    digest: str = "sha256",
    serializer: str = "json",
) -> Signer:
    """Make the `auth` serializer sign with `key` (PEM) as `certificate` (PEM) and
    verify against the certificates of `store`; process-wide, as in Celery.

    Raises:
        ImproperlyConfigured: a key, certificate, store or digest that cannot work.
    """
    _crypto()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if serializers.get_serializer(serializer).content_type not in INNER_CONTENT_TYPES:
        raise ImproperlyConfigured(
            f"setup_security(serializer={serializer!r}): sign json or msgpack bodies"
        )
    try:
        private = serialization.load_pem_private_key(key, password=key_password)
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"security_key is not a usable PEM private key: {exc}") from exc
    if not isinstance(private, rsa.RSAPrivateKey):
        raise ImproperlyConfigured("security_key: only RSA keys can sign (as in Celery)")
    own = load_certificate(certificate, source="security_certificate")
    signer = Signer(
        key=private,
        signer_id=certificate_id(own),
        store=CertStore(store),
        digest=digest_algorithm(digest),
        serializer=serializer,
    )
    serializers.register(
        serializers.Serializer(
            "auth", AUTH_CONTENT_TYPE, AUTH_CONTENT_ENCODING, signer.dumps, signer.loads
        )
    )
    return signer
