"""Every result backend's capability flags, pinned: a flag flipped by mistake would turn
contract tests into capability skips, or change what the worker asks the backend for."""

from __future__ import annotations

import importlib

from celeriac.backends import BACKEND_SCHEMES
from celeriac.backends.base import ResultBackend

FLAGS = (
    "supports_native_join",
    "supports_lookup",
    "supports_crash_ledger",
    "supports_rate_limit",
    "supports_revocation",
    "supports_recent",
)

# class → its flags, in the order of FLAGS
CAPABILITIES: dict[str, tuple[bool, ...]] = {
    #                join   lookup crashes rate   revocation recent
    "MemoryBackend": (True,  True,  True,   False, True,      True),
    "SQLiteBackend": (True,  True,  True,   True,  True,      True),
    "RedisBackend":  (True,  True,  True,   True,  True,      True),
    "RPCBackend":    (False, False, False,  False, False,     False),
    "DjangoBackend": (True,  True,  False,  False, True,      False),
}  # fmt: skip


def test_every_backends_capability_flags_are_pinned() -> None:
    assert {name for name in vars(ResultBackend) if name.startswith("supports_")} <= set(FLAGS)
    classes = {
        getattr(importlib.import_module(module), name)
        for module, name, _ in BACKEND_SCHEMES.values()
    }
    actual = {cls.__name__: tuple(getattr(cls, flag) for flag in FLAGS) for cls in classes}
    assert actual == CAPABILITIES
