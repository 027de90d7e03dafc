"""Task states and their precedence (spec §3.4), with celery.states as the oracle."""

from __future__ import annotations

from celery import states as celery_states

from celeriac import states

STATE_NAMES = ["PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "REVOKED"]
STATE_NAMES += ["REJECTED", "RETRY", "IGNORED"]


def test_state_names_are_celerys() -> None:
    for name in STATE_NAMES:
        assert getattr(states, name) == getattr(celery_states, name) == name


def test_state_groups_are_celerys() -> None:
    assert states.READY_STATES == celery_states.READY_STATES
    assert states.UNREADY_STATES == celery_states.UNREADY_STATES
    assert states.EXCEPTION_STATES == celery_states.EXCEPTION_STATES
    assert states.PROPAGATE_STATES == celery_states.PROPAGATE_STATES
    assert states.ALL_STATES == celery_states.ALL_STATES


def test_precedence_order_follows_the_spec() -> None:
    # SUCCESS > FAILURE > custom > REVOKED > STARTED > RECEIVED > REJECTED > RETRY > PENDING
    ordered = ["SUCCESS", "FAILURE", "PROGRESS", "REVOKED", "STARTED"]
    ordered += ["RECEIVED", "REJECTED", "RETRY", "PENDING"]
    ranks = [states.precedence(state) for state in ordered]
    assert ranks == sorted(ranks)
    assert len(set(ranks)) == len(ranks)


def test_precedence_equals_celerys() -> None:
    for state in [*STATE_NAMES, "PROGRESS", "custom-thing", ""]:
        assert states.precedence(state) == celery_states.precedence(state)


def test_every_custom_state_ranks_the_same() -> None:
    assert states.precedence("PROGRESS") == states.precedence("UPLOADING")
    assert states.precedence("IGNORED") == states.precedence("PROGRESS")


def test_a_ready_state_outranks_every_unready_one() -> None:
    for ready in (states.SUCCESS, states.FAILURE):
        for unready in states.UNREADY_STATES:
            assert states.precedence(ready) < states.precedence(unready)
