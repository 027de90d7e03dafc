"""The Redis broker's key layout: kombu's names, built once. No server."""

from __future__ import annotations

from celeriac.brokers.redis.keys import Keys

SEP = "\x06\x16"


def test_a_fetch_pops_every_queues_lists_priority_major() -> None:
    keys = Keys({"global_keyprefix": "p:", "priority_steps": (0, 5)}, "c1")
    plan = keys.plan(["a", "b"])
    assert plan.list_keys == ("p:a", "p:b", f"p:a{SEP}5", f"p:b{SEP}5")
    assert plan.list_queues == ("a", "b", "a", "b")
    assert plan.watched == {
        b"p:a",
        b"p:b",
        f"p:a{SEP}5".encode(),
        f"p:b{SEP}5".encode(),
        b"p:_celeriac.delayed",
    }
    assert keys.plan(["a", "b"]) is plan
    assert keys.step_keys("a") == ["p:a", f"p:a{SEP}5"]


def test_kombus_and_celeriacs_keys_get_the_global_prefix() -> None:
    keys = Keys({"global_keyprefix": "p:", "unacked_key": "u"}, "c1")
    assert (keys.unacked, keys.index, keys.mutex) == ("p:u", "p:unacked_index", "p:unacked_mutex")
    assert keys.held == keys.held_of("c1") == "p:_celeriac.held.c1"
    assert keys.last_fetch == "p:_celeriac.fetch.c1"
    assert keys.delayed("q") == keys.delayed_prefix() + "q" == "p:_celeriac.delayed.q"
    assert keys.binding("q") == "p:_kombu.binding.q"
    assert keys.binding_permanent("q") == "p:_kombu.binding_permanent.q"
