"""The recipes' web process: `GET /add?x=1&y=2` queues `add` and answers with its id.

Standard library only (wsgiref), so the image needs nothing but celeriac; a real project
runs its Django, Flask or FastAPI app here instead.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING
from urllib.parse import parse_qs
from wsgiref.simple_server import make_server

from proj import add

if TYPE_CHECKING:
    from collections.abc import Iterable
    from wsgiref.types import StartResponse, WSGIEnvironment


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    if environ.get("PATH_INFO") != "/add":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"try /add?x=1&y=2\n"]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        x, y = int(query["x"][0]), int(query["y"][0])
    except (KeyError, ValueError):
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"x and y must be integers\n"]
    result = add.delay(x, y)
    start_response("202 Accepted", [("Content-Type", "application/json")])
    return [json.dumps({"task_id": result.id}).encode() + b"\n"]


def main() -> None:
    port = int(os.environ.get("PORT", "8000"))
    with make_server("0.0.0.0", port, application) as server:  # a container: every interface
        server.serve_forever()


if __name__ == "__main__":
    main()
