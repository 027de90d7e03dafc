"""The tick loop on a fake clock and the memory broker: what is sent, when, and once."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from celeriac._time import FakeClock
from celeriac.beat.entries import Entry
from celeriac.beat.scheduler import Scheduler, from_us, tick_task_id
from celeriac.beat.service import make_scheduler
from celeriac.beat.store import MemoryScheduleStore, open_store
from celeriac.exceptions import BrokerError, ImproperlyConfigured
from celeriac.schedules import crontab, schedule
from celeriac.testing import memory_app

if TYPE_CHECKING:
    from celeriac import Celeriac

UTC = timezone.utc
# 2026-03-29 00:59:30 UTC: 01:59:30 in Berlin, half a minute before the clocks go forward.
START = datetime(2026, 3, 29, 0, 59, 30, tzinfo=UTC).timestamp()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def app() -> Celeriac:
    return memory_app("beatapp")


@pytest.fixture
def store(clock: FakeClock) -> MemoryScheduleStore:
    return MemoryScheduleStore(clock=clock)


def make(app: Celeriac, store: MemoryScheduleStore, clock: FakeClock, **options: Any) -> Scheduler:
    options.setdefault("lease_seconds", 5.0)
    return Scheduler(app, store=store, clock=clock, **options)


def sent(app: Celeriac) -> list[dict[str, Any]]:
    """Every message beat put in the default queue so far (taken out)."""
    found: list[dict[str, Any]] = []
    while True:
        batch = app.broker.receive(["celery"], limit=100, timeout=0)
        if not batch:
            return found
        for delivery in batch:
            headers = delivery.message.headers
            found.append(
                {
                    "id": headers["id"],
                    "task": headers["task"],
                    "entry": headers["beat_entry"],
                    "at": datetime.fromisoformat(headers["beat_scheduled_at"]),
                }
            )
            app.broker.ack(delivery)


def run_for(clock: FakeClock, seconds: float, *schedulers: Scheduler, step: float = 0.25) -> None:
    """Advance the clock in steps, running one pass of each scheduler at each."""
    end = clock.time() + seconds
    while clock.time() < end:
        for scheduler in schedulers:
            scheduler.tick()
        clock.advance(step)


def test_interval_entry_runs_once_per_tick_on_its_phase(app, store, clock):
    app.conf.beat_schedule = {"every-2s": {"task": "t.ping", "schedule": 2.0, "args": (1,)}}
    beat = make(app, store, clock)
    run_for(clock, 10.1, beat)
    runs = sent(app)
    start = datetime.fromtimestamp(START, UTC)
    assert [r["at"] for r in runs] == [start + timedelta(seconds=2 * k) for k in range(1, 6)]
    assert all(r["task"] == "t.ping" for r in runs)
    assert [r["id"] for r in runs] == [
        tick_task_id("celerybeat-schedule", "every-2s", int(r["at"].timestamp() * 1_000_000))
        for r in runs
    ]


def test_missed_runs_are_sent_once_on_catch_up(app, store, clock):
    app.conf.beat_schedule = {"every-1s": {"task": "t.ping", "schedule": 1.0}}
    beat = make(app, store, clock)
    run_for(clock, 3.1, beat)
    assert len(sent(app)) == 3
    clock.advance(100)  # no beat alive for 100 s
    beat.tick()
    runs = sent(app)
    assert len(runs) == 1
    assert runs[0]["at"] == datetime.fromtimestamp(START + 103, UTC)
    run_for(clock, 2.1, beat)
    assert [r["at"] for r in sent(app)] == [
        datetime.fromtimestamp(START + 104, UTC),
        datetime.fromtimestamp(START + 105, UTC),
    ]


def test_without_catch_up_a_missed_run_is_skipped(app, store, clock):
    app.conf.update(beat_catch_up=False)
    app.conf.beat_schedule = {"every-60s": {"task": "t.ping", "schedule": 60.0}}
    beat = make(app, store, clock)
    run_for(clock, 120.1, beat, step=1)
    assert len(sent(app)) == 2
    clock.advance(1000)  # no beat alive; the latest missed run (START+1080) is 40 s late
    beat.tick()
    assert sent(app) == []
    run_for(clock, 30, beat, step=1)
    assert [r["at"] for r in sent(app)] == [datetime.fromtimestamp(START + 1140, UTC)]


def test_without_catch_up_a_run_late_only_by_a_takeover_is_still_sent(app, store, clock):
    app.conf.update(beat_catch_up=False)
    app.conf.beat_schedule = {"every-60s": {"task": "t.ping", "schedule": 60.0}}
    beat = make(app, store, clock)
    beat.tick()
    clock.advance(64)  # late by 4 s, less than twice the 5 s lease
    beat.tick()
    assert [r["at"] for r in sent(app)] == [datetime.fromtimestamp(START + 60, UTC)]


def test_crontab_runs_in_the_app_time_zone_across_dst(app, store, clock):
    app.conf.update(timezone="Europe/Berlin")
    app.conf.beat_schedule = {"hourly": {"task": "t.ping", "schedule": crontab(minute=0)}}
    beat = make(app, store, clock)
    run_for(clock, 2 * 3600 + 60, beat, step=15)
    berlin = [r["at"].astimezone(app_tz()) for r in sent(app)]
    # 02:00 does not exist that night in Berlin: no run twice, none for the missing hour.
    assert [moment.strftime("%H:%M %Z") for moment in berlin] == [
        "03:00 CEST",
        "04:00 CEST",
        "05:00 CEST",
    ]


def app_tz() -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo("Europe/Berlin")


def test_only_the_leader_sends_and_a_follower_takes_over(app, store, clock):
    app.conf.beat_schedule = {"every-1s": {"task": "t.ping", "schedule": 1.0}}
    first = make(app, store, clock, owner="first")
    second = make(app, store, clock, owner="second")
    run_for(clock, 5.1, first, second)
    assert first.stats().is_leader
    assert not second.stats().is_leader
    assert second.stats().leader == "first"
    before = sent(app)
    assert len(before) == 5
    assert second.sent == 0
    # `first` dies: only `second` runs from now on.
    run_for(clock, 10.1, second)
    assert second.leadership.token > 0
    after = sent(app)
    times = [r["at"] for r in before + after]
    assert len(times) == len(set(times))
    # The ticks inside the takeover window (the 5 s lease) are caught up by one send.
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= timedelta(seconds=5.5)
    assert times[-1] == datetime.fromtimestamp(START + 15, UTC)


def test_a_stalled_leader_cannot_send_after_it_was_replaced(app, store, clock):
    app.conf.beat_schedule = {"every-1s": {"task": "t.ping", "schedule": 1.0}}
    first = make(app, store, clock, owner="first")
    second = make(app, store, clock, owner="second")
    run_for(clock, 2.1, first, second)
    run_for(clock, 8.0, second)  # `first` stalls past its lease; `second` leads
    sent(app)
    first_sent = first.sent
    # `first` wakes up believing it leads: its claim is fenced, it sends nothing.
    assert first.leadership.is_leader
    store_view = store.load()["every-1s"]
    first._run_entry(
        first.load_entries()["every-1s"], store_view, first.now() + timedelta(seconds=5)
    )
    assert first.sent == first_sent
    assert sent(app) == []


class FailingSends(Scheduler):
    """A beat whose broker refuses the first `failures` sends."""

    failures = 1

    def send(self, entry: Any, *, task_id: str, scheduled: datetime) -> None:
        if self.failures:
            self.failures -= 1
            raise BrokerError("broker refused the message")
        super().send(entry, task_id=task_id, scheduled=scheduled)


def test_a_claimed_tick_whose_send_failed_is_sent_by_the_next_leader(app, store, clock):
    app.conf.beat_schedule = {"every-1s": {"task": "t.ping", "schedule": 1.0}}
    first = FailingSends(app, store=store, clock=clock, owner="first", lease_seconds=5.0)
    second = make(app, store, clock, owner="second")
    first.tick()
    clock.advance(1.0)
    first.tick()  # claimed, then the send failed, and `first` dies here
    pending = store.load()["every-1s"]
    assert pending.pending_tick is not None
    run_for(clock, 8.0, second)
    runs = sent(app)
    assert runs[0]["at"] == from_us(pending.pending_tick)
    assert runs[0]["id"] == pending.pending_task_id
    times = [r["at"] for r in runs]
    assert len(times) == len(set(times))


def test_a_stalled_leader_does_not_resend_the_new_leaders_claim(app, store, clock):
    app.conf.beat_schedule = {"every-1s": {"task": "t.ping", "schedule": 1.0}}
    first = make(app, store, clock, owner="first")
    second = FailingSends(app, store=store, clock=clock, owner="second", lease_seconds=5.0)
    run_for(clock, 2.1, first, second)
    sent(app)
    clock.advance(6.0)  # `first` stalls past its lease
    second.tick()  # `second` leads, claims the latest tick, and its send fails
    pending = store.load()["every-1s"]
    assert pending.pending_tick is not None
    # `first` wakes up and still believes it leads: it must not send that claim.
    first._run_entry(first.load_entries()["every-1s"], pending, first.now())
    assert sent(app) == []
    assert store.load()["every-1s"].pending_tick == pending.pending_tick


def test_a_failed_send_is_retried_by_the_same_leader_with_the_same_id(app, store, clock):
    app.conf.beat_schedule = {"every-5s": {"task": "t.ping", "schedule": 5.0}}
    beat = FailingSends(app, store=store, clock=clock, lease_seconds=5.0)
    beat.tick()
    clock.advance(5.0)
    assert beat.tick() == pytest.approx(1.0)  # the send failed: try again in a second
    assert sent(app) == []
    clock.advance(1.0)
    beat.tick()
    runs = sent(app)
    assert len(runs) == 1
    assert runs[0]["at"] == datetime.fromtimestamp(START + 5, UTC)


def test_an_entry_whose_send_fails_does_not_stop_the_others(app, store, clock):
    app.conf.beat_schedule = {
        "broken": {"task": "t.x", "schedule": 1.0, "options": {"eta": "tomorrow"}},
        "fine": {"task": "t.y", "schedule": 1.0},
    }
    beat = make(app, store, clock)
    run_for(clock, 3.1, beat)
    assert [r["entry"] for r in sent(app)] == ["fine", "fine", "fine"]


def test_schedules_in_code_are_reconciled_with_stored_state(app, store, clock):
    app.conf.beat_schedule = {
        "kept": {"task": "t.ping", "schedule": 10.0},
        "removed": {"task": "t.ping", "schedule": 1.0},
    }
    beat = make(app, store, clock)
    run_for(clock, 3.1, beat)
    assert {r["entry"] for r in sent(app)} == {"removed"}
    beat.close()  # stopped cleanly: the lease is released
    # A new deployment: "kept" runs every 2 s now, "removed" is gone, "added" is new.
    app.conf.beat_schedule = {
        "kept": {"task": "t.ping", "schedule": 2.0},
        "added": {"task": "t.pong", "schedule": 3.0},
    }
    restarted = make(app, store, clock)
    run_for(clock, 6.1, restarted)
    runs = sent(app)
    assert {r["entry"] for r in runs} == {"kept", "added"}
    assert set(store.load()) == {"kept", "added"}
    kept = [r["at"] for r in runs if r["entry"] == "kept"]
    # Its last run was the start: the new 2 s interval counts from there (caught up once).
    assert kept[1] - kept[0] == timedelta(seconds=2)


def test_add_periodic_task_in_on_after_configure(app: Celeriac, store, clock):
    @app.task(name="t.hello")
    def hello(who: str) -> str:
        return who

    @app.on_after_configure.connect
    def setup(sender: Any, **kwargs: Any) -> None:
        sender.add_periodic_task(2.0, hello.s("world"), name="hello every 2", queue="celery")

    app.finalize()
    assert app.conf.beat_schedule["hello every 2"]["args"] == ("world",)
    beat = make(app, store, clock)
    run_for(clock, 2.1, beat)
    assert [(r["entry"], r["task"]) for r in sent(app)] == [("hello every 2", "t.hello")]


def test_add_periodic_task_refuses_a_bad_schedule(app: Celeriac):
    @app.task(name="t.hello")
    def hello() -> None: ...

    with pytest.raises(ImproperlyConfigured, match="not a schedule"):
        app.add_periodic_task("every day", hello.s())


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"schedule": 1.0}, "needs 'task'"),
        ({"task": "t.x"}, "needs 'schedule'"),
        ({"task": "t.x", "schedule": 1.0, "every": 2}, "unknown key"),
        ({"task": "t.x", "schedule": 0}, "longer than 0"),
        ({"task": "t.x", "schedule": 1.0, "args": "abc"}, "'args' must be"),
        ({"task": "t.x", "schedule": 1.0, "options": {"task_id": "x"}}, "task_id"),
    ],
)
def test_bad_entries_are_refused_with_their_name(app, store, clock, definition, message):
    app.conf.beat_schedule = {"bad-entry": definition}
    beat = make(app, store, clock)
    with pytest.raises(ImproperlyConfigured, match=message) as raised:
        beat.tick()
    assert "bad-entry" in str(raised.value)


def test_celery_schedule_objects_are_refused_with_the_replacement(app, store, clock):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from celery.schedules import crontab as celery_crontab

    app.conf.beat_schedule = {"c": {"task": "t.x", "schedule": celery_crontab(minute=0)}}
    with pytest.raises(ImproperlyConfigured, match=r"celeriac\.schedules"):
        make(app, store, clock).tick()


def test_dry_run_lists_the_next_times_without_changing_state(app, store, clock):
    app.conf.update(timezone="UTC")
    app.conf.beat_schedule = {
        "quarterly": {"task": "t.x", "schedule": crontab(minute="*/15")},
        "every-90s": {"task": "t.y", "schedule": 90},
    }
    beat = make(app, store, clock)
    upcoming = beat.upcoming(3)
    assert [t.strftime("%H:%M:%S") for t in upcoming["quarterly"]] == [
        "01:00:00",
        "01:15:00",
        "01:30:00",
    ]
    assert [t.strftime("%H:%M:%S") for t in upcoming["every-90s"]] == [
        "01:01:00",
        "01:02:30",
        "01:04:00",
    ]
    assert store.load() == {}


def test_rabbitmq_with_rpc_results_is_a_clear_error():
    app = memory_app("beatapp")
    app.conf.update(broker_url="amqp://guest:guest@localhost//", result_backend="rpc://")
    with pytest.raises(ImproperlyConfigured, match="result_backend"):
        open_store(app)


def test_rabbitmq_with_sqlite_results_uses_the_backend_file(tmp_path):
    app = memory_app("beatapp")
    url = f"sqlite:///{tmp_path}/results.db"
    app.conf.update(broker_url="amqp://guest:guest@localhost//", result_backend=url)
    store = open_store(app)
    try:
        assert str(tmp_path) in store.where
    finally:
        store.close()


def test_settings_beat_does_not_need_are_refused(app):
    with pytest.raises(ImproperlyConfigured, match="beat_sync_every"):
        app.conf.beat_sync_every = 10


class TableScheduler(Scheduler):
    """Entries from a "table" (a dict an admin UI would edit), as the docs show."""

    table: ClassVar[dict[str, tuple[str, float]]] = {}

    def load_entries(self) -> dict[str, Entry]:
        return {
            name: Entry(name, task, schedule(every, app=self.app))
            for name, (task, every) in self.table.items()
        }


def test_a_table_backed_scheduler_plugs_in_and_edits_take_effect(app, store, clock):
    TableScheduler.table = {"from-table": ("t.ping", 2.0)}
    beat = TableScheduler(app, store=store, clock=clock, lease_seconds=5.0)
    run_for(clock, 4.1, beat)
    assert [r["entry"] for r in sent(app)] == ["from-table", "from-table"]
    TableScheduler.table = {"edited": ("t.pong", 1.0)}
    run_for(clock, 2.1, beat)
    runs = sent(app)
    assert {(r["entry"], r["task"]) for r in runs} == {("edited", "t.pong")}
    assert set(store.load()) == {"edited"}


def test_beat_scheduler_setting_names_the_class(app):
    app.conf.beat_scheduler = f"{__name__}:TableScheduler"
    assert type(make_scheduler(app)) is TableScheduler


def test_a_celery_scheduler_class_is_refused(app):
    with pytest.raises(ImproperlyConfigured, match=r"not a celeriac\.beat\.Scheduler"):
        make_scheduler(app, scheduler="celery.beat:PersistentScheduler")
