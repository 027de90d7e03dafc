"""The tick loop: lead (or wait to), then send each due run exactly once.

`Scheduler.tick()` does one pass and returns how long to sleep; `run()` loops it. The
clock is injected (`celeriac._time.Clock`), so tests drive time by hand.

How one run (a *tick*: an entry and its scheduled time) is sent, and what that
guarantees:

1. The tick is the entry's next scheduled time after its stored last run
   (`next_run_after`), so every beat process names it identically. Its task id is
   derived from the schedule name, the entry and that time (uuid5).
2. Where the state lives on the broker's server (a Redis or SQLite broker),
   `claim_and_send` does everything in one atomic step: it checks that this process
   holds the current lease (fencing token) and that the stored last run is unchanged,
   writes the message the app's normal send path built (`prepare`), and records the tick
   as the last run. A crash or a stall leaves all of it done or none of it: each tick is
   sent exactly once.
3. Otherwise (RabbitMQ with the state in the result backend; on Redis, a message that
   waits broker-side for its ETA, or `replicas_to_confirm`): `claim` records the tick as
   pending, atomically and under the same checks (two leaders can never both claim one
   tick); the task is sent through the app's normal send path; `confirm` makes the tick
   the last run and clears the claim.

On the three-step path, a crash before the claim leaves nothing: the next leader claims
the tick itself. A crash between claim and confirmation leaves the claim pending: the
next leader (or this one, on its next pass) sends it again with the same task id before
anything else (`resume` fences that re-send like a claim), so the tick is never dropped.
That re-send duplicates the message only if the crash came after the broker took it and
before the confirmation (one round trip), or if the claiming leader stalled past its
lease before sending; the copy has the same task id.

Catch-up: when several ticks of an entry passed unseen (no beat was alive, or during a
takeover), only the latest is sent, once (`beat_catch_up`, the default); with
`beat_catch_up = False` a tick later than twice the lease time is recorded as skipped,
not sent.

Interface for other entry sources (a table an admin UI edits, as django-celery-beat):
subclass `Scheduler` and override `load_entries()`; it is called on every pass, and the
store reconciles what it returns (new entries start now, changed ones keep their last
run, removed ones stop). Name the subclass in `beat_scheduler` or `-S`.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, final

from celeriac._crashpoints import crash_point
from celeriac._time import Clock, SystemClock
from celeriac.beat.entries import Entry, entries_from_config
from celeriac.beat.leader import Leadership
from celeriac.beat.store import DEFAULT_SCHEDULE_NAME, EntryState, ScheduleStore, open_store
from celeriac.exceptions import CeleriacError
from celeriac.schedules import BaseSchedule, schedule

if TYPE_CHECKING:
    import threading
    from collections.abc import Mapping

    from celeriac.app.base import Celeriac
    from celeriac.brokers.base import Outgoing

__all__ = ["BeatStats", "Scheduler", "from_us", "tick_task_id", "to_us"]

logger = logging.getLogger("celeriac.beat")

UTC = timezone.utc
# Celery's default scheduler sleeps at most 5 minutes between checks.
DEFAULT_MAX_INTERVAL = 300.0
# After an error from the store or the broker, try again this soon.
ERROR_RETRY = 1.0
# Catch-up walks at most this many missed ticks of one entry to find the latest.
MAX_CATCH_UP_STEPS = 1_000_000
# Task ids of beat's runs: uuid5 in this namespace of "<schedule>\0<entry>\0<tick µs>".
TASK_ID_NAMESPACE = uuid.UUID("6f1c2a0e-5b1d-4f7a-9a43-8e0c2f1b7d55")


@final
@dataclass(frozen=True, slots=True)
class BeatStats:
    """What one beat process is doing (for status pages).

    Attributes:
        owner: This process's name in the lease.
        schedule: The schedule's name (`-s`).
        is_leader: Whether it leads now.
        leader: Who led at the last lease step (this process or another).
        sent: Runs this process sent since it started.
    """

    owner: str
    schedule: str
    is_leader: bool
    leader: str | None
    sent: int


def to_us(moment: datetime) -> int:
    """An aware instant as integer microseconds since the epoch."""
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)


def tick_task_id(schedule_name: str, entry: str, tick: int) -> str:
    """The task id of `entry`'s run at `tick` (µs): the same in every beat process."""
    return str(uuid.uuid5(TASK_ID_NAMESPACE, f"{schedule_name}\0{entry}\0{tick}"))


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Scheduler:
    """Sends `app`'s periodic tasks; one of any number of beat processes leads.

    Args:
        app: The app (its settings, send path and time zone).
        store: Where the lease and last runs live (default: `open_store(app, name)`).
        schedule_name: The state's name in the store (`-s`).
        clock: Wall and monotonic time (tests inject a fake one).
        owner: This process's unique name in the lease.
        lease_seconds: Lease length (default `beat_lease_seconds`).
        max_interval: Longest sleep between passes (default `beat_max_loop_interval`,
            else 300 s as Celery).
        catch_up: Send a run missed while no beat was alive (default `beat_catch_up`).
    """

    def __init__(
        self,
        app: Celeriac,
        *,
        store: ScheduleStore | None = None,
        schedule_name: str | None = None,
        clock: Clock | None = None,
        owner: str | None = None,
        lease_seconds: float | None = None,
        max_interval: float | None = None,
        catch_up: bool | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.schedule_name = schedule_name or conf.beat_schedule_filename or DEFAULT_SCHEDULE_NAME
        self.store = store or open_store(app, self.schedule_name)
        self.clock: Clock = clock or SystemClock()
        self.lease_seconds = float(lease_seconds or conf.beat_lease_seconds)
        self.max_interval = float(
            max_interval or conf.beat_max_loop_interval or DEFAULT_MAX_INTERVAL
        )
        self.catch_up = conf.beat_catch_up if catch_up is None else catch_up
        self.leadership = Leadership(
            self.store, owner or _default_owner(), lease_seconds=self.lease_seconds
        )
        self._reconciled: tuple[int, dict[str, str]] | None = None
        self.sent = 0

    # -- the interface for other entry sources -----------------------------------------

    def load_entries(self) -> Mapping[str, Entry]:
        """The entries to run, by name. Override for a table-backed schedule."""
        return entries_from_config(self.app)

    def send(self, entry: Entry, *, task_id: str, scheduled: datetime) -> None:
        """Send one run through the app's normal send path."""
        self._send_task(entry, task_id, scheduled)
        self._sent(entry, task_id, scheduled)

    def prepare(self, entry: Entry, *, task_id: str, scheduled: datetime) -> list[Outgoing]:
        """The messages the app's normal send path builds for one run, not yet sent."""
        with self.app.sender.capture() as items:
            self._send_task(entry, task_id, scheduled)
        return items

    def _send_task(self, entry: Entry, task_id: str, scheduled: datetime) -> None:
        options = dict(entry.options)
        headers = {
            **dict(options.pop("headers", None) or {}),
            "beat_entry": entry.name,
            "beat_scheduled_at": scheduled.isoformat(),
        }
        self.app.send_task(
            entry.task,
            entry.args,
            entry.kwargs,
            task_id=task_id,
            headers=headers,
            _task=self.app.tasks.get(entry.task),
            **options,
        )

    def _sent(self, entry: Entry, task_id: str, scheduled: datetime) -> None:
        self.sent += 1
        logger.info(
            "Scheduler: Sending due task %s (%s) id=%s scheduled for %s",
            entry.name,
            entry.task,
            task_id,
            scheduled.astimezone(UTC).isoformat(),
        )

    # -- the loop ----------------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.time(), UTC)

    def tick(self) -> float:
        """One pass: lead or follow; if leading, send what is due. Returns seconds to
        sleep before the next pass."""
        lease_wait = self.leadership.step()
        if not self.leadership.is_leader:
            return min(lease_wait, self.max_interval)
        now = self.now()
        entries = self.load_entries()
        states = self._states(entries, now)
        if states is None:
            self.leadership.lost()
            return 0.0
        wake = now + timedelta(seconds=self.max_interval)
        for name, entry in entries.items():
            state = states.get(name)
            if state is None:
                continue
            try:
                next_at = self._run_entry(entry, state, now)
            except Exception as exc:  # isolation boundary: one entry must not stop the rest
                # A claimed tick whose send failed stays pending: it is sent again (same
                # id) on the next try, before any later tick of this entry.
                log = logger.warning if isinstance(exc, CeleriacError) else logger.exception
                log(
                    "beat: %s (%s) failed: %s; trying again in %.0f s",
                    name,
                    entry.task,
                    exc,
                    ERROR_RETRY,
                )
                wake = min(wake, now + timedelta(seconds=ERROR_RETRY))
                continue
            if next_at is None:  # fenced: another process leads now
                self.leadership.lost()
                return 0.0
            wake = min(wake, next_at)
        return max(0.0, min((wake - self.now()).total_seconds(), lease_wait))

    def _states(self, entries: Mapping[str, Entry], now: datetime) -> dict[str, EntryState] | None:
        wanted = {name: entry.fingerprint() for name, entry in entries.items()}
        token = self.leadership.token
        if self._reconciled == (token, wanted):
            return self.store.load()
        states = self.store.reconcile(self.leadership.owner, token, wanted, now=to_us(now))
        if states is not None:
            self._reconciled = (token, wanted)
            logger.info("beat schedule %s: %d entries", self.schedule_name, len(states))
        return states

    def _run_entry(self, entry: Entry, state: EntryState, now: datetime) -> datetime | None:
        last = state.last_run
        if state.pending_tick is not None:
            # Claimed but not confirmed: a leader died (or a send failed) in between.
            # Send it again, with the same id, before anything else: only while leading.
            owner, token = self.leadership.owner, self.leadership.token
            if not self.store.resume(owner, token, entry.name, tick=state.pending_tick):
                return None if self.store.leader() != owner else now
            if state.pending_task_id:
                logger.warning(
                    "beat: re-sending %s scheduled for %s (claimed, not confirmed)",
                    entry.name,
                    from_us(state.pending_tick).isoformat(),
                )
                self.send(
                    entry, task_id=state.pending_task_id, scheduled=from_us(state.pending_tick)
                )
            self.store.confirm(entry.name, state.pending_tick)
            last = state.pending_tick
        due = next_run(entry.schedule, from_us(last), now)
        if due > now:
            return due
        latest = latest_due(entry.schedule, due, now)
        tick = to_us(latest)
        skip = not self.catch_up and (now - latest).total_seconds() > 2 * self.lease_seconds
        task_id = "" if skip else tick_task_id(self.schedule_name, entry.name, tick)
        owner, token = self.leadership.owner, self.leadership.token
        items = None
        if not skip and self.store.shares_broker:
            items = self.prepare(entry, task_id=task_id, scheduled=latest)
            # Where the state shares the broker's server: claim, publish, confirm at once.
            sent = self.store.claim_and_send(
                owner, token, entry.name, last_run=last, tick=tick, items=items
            )
            if sent is not None:
                if sent == "fenced":
                    return None
                if sent != "sent":  # changed under us: look again on the next pass
                    return now
                crash_point("after_beat_send")
                self._sent(entry, task_id, latest)
                return next_run(entry.schedule, latest, now)
        claimed = self.store.claim(
            owner, token, entry.name, last_run=last, tick=tick, task_id=task_id
        )
        if claimed == "fenced":
            return None
        if claimed != "claimed":  # changed under us: look again on the next pass
            return now
        if skip:
            logger.info(
                "beat: skipping %s scheduled for %s (missed; beat_catch_up is off)",
                entry.name,
                latest.isoformat(),
            )
        else:
            crash_point("before_beat_send")
            if items is None:
                self.send(entry, task_id=task_id, scheduled=latest)
            else:  # built already, for a one-step send this broker could not take
                self.app.sender.publish_captured(items)
                self._sent(entry, task_id, latest)
            crash_point("after_beat_send")
        self.store.confirm(entry.name, tick)
        return next_run(entry.schedule, latest, now)

    def run(self, stop: threading.Event) -> None:
        """Pass after pass until `stop` is set; then release the lease."""
        try:
            while not stop.is_set():
                try:
                    delay = self.tick()
                except CeleriacError as exc:
                    logger.warning("beat: %s; retrying in %.0f s", exc, ERROR_RETRY)
                    delay = ERROR_RETRY
                except Exception:  # isolation boundary: e.g. a table scheduler's database
                    logger.exception("beat: a pass failed; retrying in %.0f s", ERROR_RETRY)
                    delay = ERROR_RETRY
                stop.wait(delay)
        finally:
            self.close()

    def stats(self) -> BeatStats:
        return BeatStats(
            owner=self.leadership.owner,
            schedule=self.schedule_name,
            is_leader=self.leadership.is_leader,
            leader=self.leadership.holder,
            sent=self.sent,
        )

    def close(self) -> None:
        try:
            self.leadership.resign()
        except CeleriacError as exc:
            logger.warning("beat: could not release the lease: %s", exc)
        finally:
            self.store.close()

    # -- dry run -----------------------------------------------------------------------

    def upcoming(self, count: int) -> dict[str, list[datetime]]:
        """The next `count` scheduled times of each entry, from the stored last runs
        (or from now for entries not stored yet). Changes nothing."""
        now = self.now()
        states = self.store.load()
        found: dict[str, list[datetime]] = {}
        for name, entry in self.load_entries().items():
            state = states.get(name)
            last = from_us(state.last_run) if state is not None else now
            times: list[datetime] = []
            due = next_run(entry.schedule, last, now)
            if due <= now:
                due = latest_due(entry.schedule, due, now)
            while len(times) < count:
                times.append(due)
                due = next_run(entry.schedule, due, now)
            found[name] = times
        return found


def next_run(sched: Any, last: datetime, now: datetime) -> datetime:
    """The scheduled time of the first run after `last`."""
    if isinstance(sched, BaseSchedule):
        return sched.next_run_after(last)
    # A schedule object of another kind: Celery's interface only says "due in
    # remaining_estimate from now", which is exact once `now` is pinned.
    remaining: timedelta = sched.remaining_estimate(last)
    return now + remaining


def latest_due(sched: Any, first: datetime, now: datetime) -> datetime:
    """The latest scheduled time <= `now`, starting from the due tick `first`."""
    if isinstance(sched, schedule) and not sched.relative and sched.seconds > 0:
        every = sched.seconds
        steps = math.floor((now - first).total_seconds() / every)
        return first + timedelta(seconds=every * steps)
    latest = first
    for _ in range(MAX_CATCH_UP_STEPS):
        following = next_run(sched, latest, now)
        if following > now or following <= latest:
            break
        latest = following
    return latest
