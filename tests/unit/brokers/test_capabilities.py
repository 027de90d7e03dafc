"""Every broker's capability flags, pinned: a flag flipped by mistake would turn contract
tests into capability skips (or run them where they cannot pass), so it fails here first."""

from __future__ import annotations

import importlib
from typing import Any

from celeriac.brokers import BROKER_SCHEMES
from celeriac.brokers.base import Broker

FLAGS = (
    "supports_priority",
    "higher_priority_first",
    "supports_native_delay",
    "supports_rate_limit",
    "supports_leases",
    "supports_recover",
    "supports_presence",
    "delay_precision",
)

# class → its flags, in the order of FLAGS
CAPABILITIES: dict[str, tuple[Any, ...]] = {
    #               priority  high-first  delay  rate   leases recover presence precision
    "MemoryBroker": (True,    True,       True,  True,  True,  True,   True,    0.05),
    "SQLiteBroker": (True,    True,       True,  True,  True,  True,   True,    0.05),
    "RedisBroker":  (True,    False,      True,  True,  True,  True,   True,    0.05),
    "AMQPBroker":   (True,    True,       True,  False, False, False,  False,   0.15),
}  # fmt: skip


def test_every_brokers_capability_flags_are_pinned() -> None:
    assert {name for name in vars(Broker) if name.startswith("supports_")} <= set(FLAGS)
    classes = {
        getattr(importlib.import_module(module), name)
        for module, name, _ in BROKER_SCHEMES.values()
    }
    actual = {cls.__name__: tuple(getattr(cls, flag) for flag in FLAGS) for cls in classes}
    assert actual == CAPABILITIES
