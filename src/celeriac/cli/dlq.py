"""`celeriac -A tasks dlq list|show|replay|purge`: inspect and replay dead letters."""

from __future__ import annotations

import json

import click

from celeriac.brokers.dead_letter_limits import trimmed_note
from celeriac.cli import EX_USAGE, AppContext, cli, fail
from celeriac.exceptions import BrokerError

__all__ = ["dlq"]


@cli.group()
def dlq() -> None:
    """Dead-lettered messages: why they failed, and replaying them."""


@dlq.command("list")
@click.option("--limit", type=int, default=100, show_default=True)
@click.pass_obj
def list_(ctx: AppContext, limit: int) -> None:
    """One line per dead letter: id, queue, task, reason."""
    broker = ctx.app.broker
    letters = broker.list_dead_letters(limit=limit)
    if not letters:
        click.echo("no dead letters")
        return
    for letter in letters:
        headers = letter.message.headers
        note = trimmed_note(len(letter.message.body), letter.body_size, headers)
        click.echo(
            f"{letter.id}  {letter.failed_at:%Y-%m-%d %H:%M:%S}  {letter.queue}  "
            f"{headers.get('task')}[{headers.get('id')}]  {letter.reason}"
            + (f"  ({note})" if note else "")
        )


@dlq.command()
@click.argument("dead_letter_id")
@click.pass_obj
def show(ctx: AppContext, dead_letter_id: str) -> None:
    """Everything about one dead letter: reason, headers, properties and body."""
    for letter in ctx.app.broker.list_dead_letters(limit=100_000):
        if letter.id == dead_letter_id:
            message = letter.message
            note = trimmed_note(len(message.body), letter.body_size, message.headers)
            try:
                body: object = message.body.decode("utf-8")
            except UnicodeDecodeError:
                body = f"<{len(message.body)} bytes, not UTF-8>"
            click.echo(
                json.dumps(
                    {
                        "id": letter.id,
                        "queue": letter.queue,
                        "reason": letter.reason,
                        "failed_at": letter.failed_at.isoformat(),
                        "content_type": message.content_type,
                        "content_encoding": message.content_encoding,
                        "headers": message.headers,
                        "properties": message.properties,
                        "body": body,
                        "body_size": letter.body_size or len(message.body),
                        "trimmed": note or None,
                    },
                    indent=2,
                    default=str,
                )
            )
            return
    fail(f"no dead letter {dead_letter_id!r}", EX_USAGE)


@dlq.command()
@click.argument("dead_letter_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.pass_obj
def replay(ctx: AppContext, dead_letter_ids: tuple[str, ...], replay_all: bool) -> None:
    """Publish dead letters again to their queues."""
    broker = ctx.app.broker
    ids = list(dead_letter_ids)
    if replay_all:
        ids = [letter.id for letter in broker.list_dead_letters(limit=1_000_000)]
    if not ids:
        fail("name the dead letters to replay, or pass --all", EX_USAGE)
    missing: list[str] = []
    refused: list[str] = []
    for one in ids:
        try:
            if not broker.replay_dead_letter(one):
                missing.append(one)
        except BrokerError as exc:  # a trimmed dead letter: say why, go on with the rest
            refused.append(str(exc))
    click.echo(f"replayed {len(ids) - len(missing) - len(refused)}")
    if refused:
        fail("; ".join(refused), EX_USAGE)
    if missing:
        fail(f"no dead letter(s): {', '.join(missing)}", EX_USAGE)


@dlq.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def purge(ctx: AppContext, yes: bool) -> None:
    """Delete every dead letter."""
    if not yes:
        click.confirm("Delete every dead letter?", abort=True)
    click.echo(f"purged {ctx.app.broker.purge_dead_letters()}")
