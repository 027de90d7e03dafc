"""`celeriac -A tasks beat`: send periodic tasks (any number may run; one leads)."""

from __future__ import annotations

import sys
from typing import Any

import click

from celeriac.cli import EX_CONFIG, EX_UNAVAILABLE, AppContext, cli, fail
from celeriac.exceptions import CeleriacError, ImproperlyConfigured

__all__ = ["beat"]


@cli.command()
@click.option(
    "-l",
    "--loglevel",
    default="INFO",
    show_default=True,
    help="DEBUG, INFO, WARNING, ERROR or CRITICAL (INFO logs each send).",
)
@click.option(
    "-s",
    "--schedule",
    "schedule_name",
    default=None,
    help=(
        "Name of the schedule's state (last runs, leader lease), kept in the broker's "
        "store, not in a file (default: beat_schedule_filename, 'celerybeat-schedule'). "
        "Beat processes with the same name share one leader."
    ),
)
@click.option(
    "-S",
    "--scheduler",
    default=None,
    help="Scheduler class, 'module:Class' (default: beat_scheduler).",
)
@click.option(
    "--max-interval",
    type=float,
    default=None,
    help="Most seconds to sleep between checks (default: beat_max_loop_interval, else 300).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    default=False,
    help="Print the next due times of each entry and exit; sends nothing.",
)
@click.option(
    "-n",
    "--count",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="With --dry-run: how many due times per entry.",
)
@click.pass_obj
def beat(ctx: AppContext, /, **params: Any) -> None:
    """Send periodic tasks when due. Run as many as you like: one leads by a lease in
    the broker's store; the others take over within the lease time if it dies."""
    from celeriac.beat.service import make_scheduler, run_beat, setup_logging

    app = ctx.app
    try:
        setup_logging(params["loglevel"])
        app.finalize()
        scheduler = make_scheduler(
            app,
            scheduler=params["scheduler"],
            schedule_name=params["schedule_name"],
            max_interval=params["max_interval"],
        )
        if params["dry_run"]:
            _print_upcoming(scheduler, params["count"])
            scheduler.store.close()
            sys.exit(0)
        scheduler.load_entries()  # a malformed entry stops beat here, with its name
        click.echo(_banner(scheduler), err=True)
        code = run_beat(scheduler)
    except ImproperlyConfigured as exc:
        fail(str(exc), EX_CONFIG)
    except CeleriacError as exc:
        fail(str(exc), EX_UNAVAILABLE)
    sys.exit(code)


def _banner(scheduler: Any) -> str:
    from celeriac._version import __version__

    entries = scheduler.load_entries()
    lines = "\n".join(f"  . {name}: {e.task} {e.schedule!r}" for name, e in entries.items())
    return (
        f"celeriac beat {__version__} (owner {scheduler.leadership.owner})\n"
        f"  schedule:     {scheduler.schedule_name} in {scheduler.store.where}\n"
        f"  lease:        {scheduler.lease_seconds:g} s\n"
        f"  max interval: {scheduler.max_interval:g} s\n"
        f"[entries]\n{lines or '  (none)'}\n"
    )


def _print_upcoming(scheduler: Any, count: int) -> None:
    from celeriac.schedules import app_timezone

    tz = app_timezone(scheduler.app)
    entries = scheduler.load_entries()
    for name, times in scheduler.upcoming(count).items():
        entry = entries[name]
        click.echo(f"{name}  ({entry.task}, {entry.schedule!r})")
        for moment in times:
            click.echo(f"  {moment.astimezone(tz).isoformat()}")
