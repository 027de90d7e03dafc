"""`celeriac.protocol.signing`: Celery's `auth` format, and every way a body can fail
its check. Byte-level compatibility with Celery's own serializer is checked here too
(in-process, Celery's classes only read and write bytes); workers of both kinds
exchange signed messages in tests/integration/test_signed_messages.py."""

from __future__ import annotations

import base64
import shutil
from typing import TYPE_CHECKING

import pytest

from celeriac import Celeriac
from celeriac.exceptions import ImproperlyConfigured, SerializationError
from celeriac.protocol import serializers
from celeriac.protocol.codec import TaskCall, decode_task, encode_task
from celeriac.protocol.signing import SEPARATOR, CertStore, Signer, is_set_up, register_auth
from tests.signing_keys import Identity, make_identity

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytest.importorskip("cryptography")

AUTH = frozenset({"application/data"})


@pytest.fixture(autouse=True)
def _restore_the_auth_serializer() -> Iterator[None]:
    """The registry is process-wide (as kombu's is): leave it as it was."""
    before = serializers.get_serializer("auth")
    yield
    serializers.register(before)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    directory = tmp_path_factory.mktemp("keys")
    return {
        "alice": make_identity(directory, "alice"),
        "mallory": make_identity(directory, "mallory"),
    }


@pytest.fixture
def store(tmp_path: Path, keys: dict[str, Identity]) -> Path:
    """A store trusting alice only."""
    directory = tmp_path / "store"
    directory.mkdir()
    shutil.copy(keys["alice"].certificate, directory)
    return directory


def signer_for(identity: Identity, store: Path, digest: str = "sha256") -> Signer:
    return register_auth(
        key=identity.key.read_bytes(),
        key_password=None,
        certificate=identity.certificate.read_bytes(),
        store=str(store),
        digest=digest,
    )


def test_a_signed_task_decodes_after_its_signature_is_checked(
    keys: dict[str, Identity], store: Path
) -> None:
    signer_for(keys["alice"], store)
    message = encode_task(TaskCall(name="t.add", id="1", args=[2, 3]), serializer="auth")
    assert message.content_type == "application/data"
    assert decode_task(message, accept=AUTH).args == [2, 3]


def test_the_packed_fields_are_celerys(keys: dict[str, Identity], store: Path) -> None:
    signer = signer_for(keys["alice"], store)
    fields = base64.b64decode(signer.dumps([[1], {}, {}])).split(SEPARATOR, 4)
    assert base64.b64decode(fields[0]).decode().startswith("celeriac tests alice ")
    assert fields[2:] == [b"application/json", b"utf-8", b"[[1],{},{}]"]


def test_celerys_serializer_reads_ours_and_we_read_celerys(
    keys: dict[str, Identity], store: Path
) -> None:
    from celery.security.certificate import Certificate, FSCertStore
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer

    ours = signer_for(keys["alice"], store)
    theirs = SecureSerializer(
        PrivateKey(keys["alice"].key.read_text()),
        Certificate(keys["alice"].certificate.read_text()),
        FSCertStore(str(store)),
        "sha256",
    )
    body = [[2, 3], {"x": "ü"}, {"callbacks": None}]
    assert theirs.deserialize(ours.dumps(body).decode()) == body
    assert ours.loads(theirs.serialize(body).encode()) == body


def test_a_tampered_body_is_refused(keys: dict[str, Identity], store: Path) -> None:
    signer = signer_for(keys["alice"], store)
    fields = base64.b64decode(signer.dumps([[2, 3], {}, {}])).split(SEPARATOR, 4)
    fields[4] = fields[4].replace(b"2", b"9")
    with pytest.raises(SerializationError, match="bad signature"):
        signer.loads(base64.b64encode(SEPARATOR.join(fields)))


def test_a_body_signed_by_a_certificate_not_in_the_store_is_refused(
    keys: dict[str, Identity], store: Path, tmp_path: Path
) -> None:
    receiver = signer_for(keys["alice"], store)
    other_store = tmp_path / "other"
    other_store.mkdir()
    shutil.copy(keys["mallory"].certificate, other_store)
    forger = signer_for(keys["mallory"], other_store)
    with pytest.raises(SerializationError, match=r"unknown certificate.*mallory"):
        receiver.loads(forger.dumps([[1], {}, {}]))


def test_a_key_that_does_not_match_the_claimed_certificate_is_refused(
    keys: dict[str, Identity], store: Path
) -> None:
    receiver = signer_for(keys["alice"], store)
    # Mallory signs, claiming to be alice.
    from cryptography.hazmat.primitives import serialization

    mallory_key = serialization.load_pem_private_key(keys["mallory"].key.read_bytes(), None)
    forger = Signer(
        key=mallory_key,  # type: ignore[arg-type]
        signer_id=receiver.signer_id,
        store=receiver.store,
        digest=receiver.digest,
    )
    with pytest.raises(SerializationError, match="bad signature"):
        receiver.loads(forger.dumps([[1], {}, {}]))


def test_a_different_digest_does_not_verify(keys: dict[str, Identity], store: Path) -> None:
    sha512 = signer_for(keys["alice"], store, digest="sha512")
    sha256 = signer_for(keys["alice"], store)
    with pytest.raises(SerializationError, match="bad signature"):
        sha256.loads(sha512.dumps([[1], {}, {}]))


@pytest.mark.parametrize("garbage", [b"not base64!", base64.b64encode(b"one field")])
def test_a_body_that_is_not_a_signed_one_is_refused(
    keys: dict[str, Identity], store: Path, garbage: bytes
) -> None:
    signer = signer_for(keys["alice"], store)
    with pytest.raises(SerializationError, match="not a signed message body"):
        signer.loads(garbage)


def test_an_expired_certificate_in_the_store_is_refused_at_setup(tmp_path: Path) -> None:
    old = make_identity(tmp_path / "old", "old", days=-1)
    with pytest.raises(ImproperlyConfigured, match="has expired"):
        CertStore(str(old.certificate))


def test_setup_security_needs_the_auth_serializer_and_nothing_else(
    keys: dict[str, Identity], store: Path
) -> None:
    app = Celeriac("signing", broker="memory://signing", backend="memory://signing")
    app.conf.update(
        security_key=str(keys["alice"].key),
        security_certificate=str(keys["alice"].certificate),
        security_cert_store=str(store),
    )
    with pytest.raises(ImproperlyConfigured, match="accept_content = \\['auth'\\]"):
        app.setup_security()
    app.conf.update(task_serializer="auth", accept_content=["auth", "json"])
    with pytest.raises(ImproperlyConfigured, match="unsigned tasks"):
        app.setup_security()
    app.conf.accept_content = ["auth"]
    assert not is_set_up()
    app.setup_security()
    assert is_set_up()


def test_the_auth_serializer_refuses_to_sign_before_setup() -> None:
    with pytest.raises(ImproperlyConfigured, match="setup_security"):
        serializers.dumps([[], {}, {}], "auth")
