"""The inside of a prefork child: a complete consumer in its own process.

The child fetches its own batches, runs them one at a time, stores results and acks, so
no task pays for a hop through the supervisor. It ignores SIGINT/SIGQUIT (a terminal
sends those to the whole process group; the supervisor decides), treats SIGTERM as a
warm shutdown, and exits by itself if its supervisor dies.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from typing import TYPE_CHECKING, Any

from celeriac import signals
from celeriac.worker.consumer import Consumer, consumer_id_for
from celeriac.worker.control import (
    CONTROL_PIPE_INTERVAL,
    ControlPipe,
    heartbeat_freq,
    sends_heartbeats,
    task_event_dispatcher,
)
from celeriac.worker.holdings import Shutdown
from celeriac.worker.limits import SlotTimeLimits, install_alarm_handler
from celeriac.worker.pools.prefork.held import POST_INTERVAL, HeldPoster

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import FrameType

    from celeriac.app.base import Celeriac
    from celeriac.worker.options import WorkerOptions
    from celeriac.worker.slots import SlotTable

__all__ = ["STOP_SIGNALS", "child_main"]

logger = logging.getLogger("celeriac.worker")

# Blocked in the supervisor around each fork, unblocked by the child once its handlers
# are in place.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
# How often a child writes how many messages it holds into its slot.
HELD_REPORT_INTERVAL = 0.2


def child_main(
    app: Celeriac,
    options: WorkerOptions,
    *,
    index: int,
    slots: SlotTable,
    parent_pid: int,
    local_crashes: Mapping[str, int] | None = None,
    control_fd: int | None = None,
) -> int:
    """Run one prefork child until it is told to stop; return its exit code."""
    # Celery compat: children log as ForkPoolWorker-<n>.
    multiprocessing.current_process().name = f"ForkPoolWorker-{index + 1}"
    if options.logfile:
        # `-f worker%I.log`: each child logs to its own file (process index 1..N).
        from celeriac.worker.logs import reopen_logfile
        from celeriac.worker.options import expand_logfile

        mine = expand_logfile(options.logfile, options.hostname, index + 1)
        supervisor = expand_logfile(options.logfile, options.hostname, 0)
        if mine != supervisor:
            reopen_logfile(supervisor, mine)
    shutdown = Shutdown()

    def on_term(signum: int, frame: FrameType | None) -> None:
        shutdown.warm.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    install_alarm_handler()
    # The supervisor forked with these blocked; one sent meanwhile is handled now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    loop = asyncio.new_event_loop()

    def run_async(coroutine: Any) -> Any:
        return loop.run_until_complete(coroutine)

    broker = app.create_broker(consumer_id=consumer_id_for(options.hostname, os.getpid()))
    signals.worker_process_init.send(sender=None)
    try:
        # No eager connect: the consumer's first call connects, waiting out a broker
        # that is down rather than crashing (and being respawned) in a loop.
        consumer = Consumer(
            app,
            broker,
            hostname=options.hostname,
            limits=SlotTimeLimits(slots, index),
            run_async=run_async,
            local_crashes=local_crashes,
            queues=options.queues,
            prefetch=options.prefetch_multiplier,
            shutdown=shutdown,
            max_tasks=options.max_tasks_per_child,
            max_memory_kib=options.max_memory_per_child,
            parent_pid=parent_pid,
            pool="prefork",
        )
        holdings = consumer.holdings
        # What this child holds, for the supervisor's autoscaler (its measure of load).
        holdings.every(HELD_REPORT_INTERVAL, lambda: slots.set_held(index, holdings.count()))
        events = task_event_dispatcher(
            app, options.hostname, pid=parent_pid, freq=heartbeat_freq(options)
        )
        if events is not None and index == 0 and sends_heartbeats(app, options):
            # The worker's heartbeat rides on the first child's presence tick.
            events.counts = lambda: _counts(slots)
            holdings.on_presence_tick(events.tick)
        poster = HeldPoster(holdings, slots, index, options.hostname)
        poster.post()  # over what a replaced child in this slot left
        holdings.every(POST_INTERVAL, poster.post)
        if control_fd is not None:
            reader = ControlPipe(control_fd, app, consumer, events)
            consumer.holdings.every(CONTROL_PIPE_INTERVAL, reader.read)
            consumer.before_dispatch = reader.read
        try:
            reason = consumer.run()
        finally:
            if events is not None:
                events.task_events = False
                events.mailbox.close()
        if reason != "shutdown":
            logger.info("Child %d leaving (%s); the supervisor replaces it", os.getpid(), reason)
        return 0
    finally:
        try:
            signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
            broker.close()
            app.close()
        finally:
            loop.close()


def _counts(slots: SlotTable) -> tuple[int, int]:
    """(tasks running, tasks finished) in every child, for the worker's heartbeat."""
    running = sum(1 for index in range(slots.size) if slots.read(index) is not None)
    return running, slots.done()
