"""`celeriac.worker.options`: `-O`, `-X` and the `--logfile` expansions."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from celeriac.exceptions import ImproperlyConfigured
from celeriac.worker import options
from celeriac.worker.options import WorkerOptions, expand_logfile

if TYPE_CHECKING:
    from pathlib import Path

    from celeriac import Celeriac


def test_logfile_expands_celerys_keys_for_the_supervisor_and_each_child() -> None:
    template = "/var/log/%n%I-%i-%h-%d-%p-100%%.log"
    assert expand_logfile(template, "w1@host.example.com") == (
        "/var/log/w1-0-host.example.com-example.com-w1@host.example.com-100%.log"
    )
    assert expand_logfile(template, "w1@host.example.com", 2) == (
        "/var/log/w1-2-2-host.example.com-example.com-w1@host.example.com-100%.log"
    )


def test_a_logfile_without_keys_is_the_same_for_every_process() -> None:
    assert expand_logfile("worker.log", "w1@h", 3) == "worker.log"


def test_fair_sets_the_prefetch_multiplier_to_one(app: Celeriac) -> None:
    app.conf.worker_prefetch_multiplier = 8
    fair = WorkerOptions.resolve(app, pool="threads", optimization="fair")
    assert (fair.prefetch_multiplier, fair.optimization) == (1, "fair")
    assert WorkerOptions.resolve(app, pool="threads").prefetch_multiplier == 8


def test_fair_with_a_larger_prefetch_multiplier_is_refused(app: Celeriac) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"-O fair .* --prefetch-multiplier 4"):
        WorkerOptions.resolve(app, optimization="fair", prefetch_multiplier=4)


def test_exclude_queues_removes_them_from_the_consumed_ones(app: Celeriac) -> None:
    options = WorkerOptions.resolve(app, queues="a,b,c", exclude_queues="b, c")
    assert options.queues == ("a",)


def test_excluding_every_queue_is_refused(app: Celeriac) -> None:
    with pytest.raises(ImproperlyConfigured, match="excludes every queue"):
        WorkerOptions.resolve(app, exclude_queues="celery")


def test_a_heartbeat_interval_must_be_positive(app: Celeriac) -> None:
    with pytest.raises(ImproperlyConfigured, match="--heartbeat-interval must be above 0"):
        WorkerOptions.resolve(app, heartbeat_interval=0)


def test_auto_concurrency_keeps_prefork_within_the_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    monkeypatch.setattr(options, "CGROUP_CPU_MAX", str(quota))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert options.auto_concurrency("prefork") == 2
    assert options.auto_concurrency("threads") == 4
    quota.write_text("max 100000\n")
    assert options.auto_concurrency("prefork") == 4


def test_concurrency_auto_resolves_to_a_number(app: Celeriac) -> None:
    assert WorkerOptions.resolve(app, concurrency="auto").concurrency >= 1
