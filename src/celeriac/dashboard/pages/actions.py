"""The actions: revoke, rate limit, replay a dead letter, purge a queue or the dead
letters. POST only, each checked by `csrf.check`; each answers with a redirect back to
the page it came from, with a notice saying what happened."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse
from starlette.routing import Route

from celeriac.dashboard import csrf
from celeriac.dashboard.render import sources_of
from celeriac.exceptions import CeleriacError

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["routes"]

# A submitted form, field -> value.
Form = dict[str, str]
# Bytes an action's form may take.
MAX_FORM = 16_384


async def _form(request: Request) -> Form:
    """The urlencoded form the dashboard's pages post, checked for its CSRF token."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(415, "actions take an application/x-www-form-urlencoded form")
    body = await request.body()
    if len(body) > MAX_FORM:
        raise HTTPException(413, f"the form is larger than {MAX_FORM} bytes")
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    form = {name: values[-1] for name, values in fields.items()}
    csrf.check(request, form.get(csrf.FIELD, ""))
    return form


def _field(form: Form, name: str) -> str:
    value = str(form.get(name) or "").strip()
    if not value:
        raise HTTPException(400, f"the form field {name!r} is missing")
    return value


def _back(form: Form, default: str, notice: str) -> Response:
    target = str(form.get("next") or default)
    # Only a path on this site: never an open redirect.
    parts = urlsplit(target)
    if (
        parts.scheme
        or parts.netloc
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
    ):
        target = default
    joiner = "&" if "?" in target else "?"
    return RedirectResponse(f"{target}{joiner}notice={quote(notice)}", status_code=303)


async def _run(request: Request, default: str, act: Callable[[Form], str]) -> Response:
    form = await _form(request)
    try:
        notice = await run_in_threadpool(act, form)
    except CeleriacError as exc:
        notice = f"failed: {exc}"
    return _back(form, default, str(notice))


async def revoke(request: Request) -> Response:
    def act(form: Form) -> str:
        task_id = _field(form, "task_id")
        terminate = form.get("terminate") == "on"
        sources_of(request).revoke(task_id, terminate=terminate)
        return f"revoked {task_id}" + (" (terminate)" if terminate else "")

    return await _run(request, "/tasks", act)


async def rate_limit(request: Request) -> Response:
    def act(form: Form) -> str:
        name = _field(form, "task_name")
        rate = str(form.get("rate") or "").strip()
        replied = sources_of(request).rate_limit(name, rate)
        return f"rate limit of {name} set to {rate or 'none'} ({replied} worker(s) replied)"

    return await _run(request, "/workers", act)


async def replay(request: Request) -> Response:
    def act(form: Form) -> str:
        letter = _field(form, "dead_letter_id")
        if not sources_of(request).replay(letter):
            return f"no dead letter {letter}"
        return f"replayed {letter}"

    return await _run(request, "/dead-letters", act)


async def purge_dead_letters(request: Request) -> Response:
    def act(form: Form) -> str:
        if form.get("confirm") != "yes":
            raise HTTPException(400, "purging needs confirm=yes")
        return f"purged {sources_of(request).purge_dead_letters()} dead letter(s)"

    return await _run(request, "/dead-letters", act)


async def purge_queue(request: Request) -> Response:
    def act(form: Form) -> str:
        queue = _field(form, "queue")
        if form.get("confirm") != queue:
            raise HTTPException(400, "purging a queue needs confirm=<the queue's name>")
        return f"purged {sources_of(request).purge_queue(queue)} message(s) from {queue}"

    return await _run(request, "/queues", act)


routes = [
    Route("/actions/revoke", revoke, methods=["POST"]),
    Route("/actions/rate-limit", rate_limit, methods=["POST"]),
    Route("/actions/replay", replay, methods=["POST"]),
    Route("/actions/purge-dead-letters", purge_dead_letters, methods=["POST"]),
    Route("/actions/purge-queue", purge_queue, methods=["POST"]),
]
