"""`celeriac -A tasks dashboard`: the web dashboard (Starlette served by Uvicorn).

Binds to 127.0.0.1 unless `--host` says otherwise; beyond loopback it refuses to start
without `--auth token:SECRET` or `--auth basic:USER:PASSWORD` (also read from
`CELERIAC_DASHBOARD_AUTH`, which keeps the secret out of the process list).
"""

from __future__ import annotations

import click

from celeriac.cli import EX_CONFIG, AppContext, cli, fail
from celeriac.exceptions import ImproperlyConfigured

__all__ = ["dashboard"]

# Flower's port: a Celery user's bookmarks keep working.
DEFAULT_PORT = 5555
# Seconds a stopping dashboard waits for open requests (live streams never end).
SHUTDOWN_GRACE = 3


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True)
@click.option(
    "--auth",
    envvar="CELERIAC_DASHBOARD_AUTH",
    metavar="token:SECRET|basic:USER:PASSWORD",
    help="Require a token or basic auth (needed beyond loopback).",
)
@click.option(
    "-Q",
    "--queues",
    default="",
    help="Comma-separated queues to show besides the configured ones.",
)
@click.option(
    "--enable-events/--no-enable-events",
    default=True,
    show_default=True,
    help="Ask the workers to send task events (as Flower does).",
)
@click.pass_obj
def dashboard(
    ctx: AppContext, host: str, port: int, auth: str | None, queues: str, enable_events: bool
) -> None:
    """Serve the web dashboard: workers, queues, tasks, dead letters, charts."""
    try:
        import uvicorn

        from celeriac.dashboard import create_app
        from celeriac.dashboard.auth import check_bind, parse_auth
    except ImportError as exc:
        fail(
            f"the dashboard needs {exc.name or 'its dependencies'}: "
            'pip install "celeriac[dashboard]"',
            EX_CONFIG,
        )
    try:
        parsed = parse_auth(auth) if auth else None
        check_bind(host, parsed)
    except ImproperlyConfigured as exc:
        fail(str(exc), EX_CONFIG)
    app = ctx.app
    web = create_app(
        app,
        auth=parsed,
        queues=tuple(q.strip() for q in queues.split(",") if q.strip()),
        enable_events=enable_events,
    )
    click.echo(f"celeriac dashboard on http://{host}:{port}/ for {app.broker.safe_url()}")
    # Open live streams must not hold a shutdown up for long.
    uvicorn.run(
        web,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )
