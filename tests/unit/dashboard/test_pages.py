"""The dashboard's pages and actions over the memory broker and backend, through
Starlette's test client (the browser test runs them on Redis with a real worker)."""

from __future__ import annotations

import re
import time

import pytest
from starlette.testclient import TestClient

from celeriac.backends.base import ResultMeta
from celeriac.dashboard import create_app, sources
from celeriac.dashboard.feed import EventFeed


@pytest.fixture
def feed(app):
    return EventFeed(app)


@pytest.fixture
def client(app, feed):
    with TestClient(create_app(app, feed=feed)) as test_client:
        yield test_client


def _token(client: TestClient, path: str = "/dead-letters") -> str:
    page = client.get(path)
    match = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


@pytest.mark.parametrize(
    "path", ["/workers", "/queues", "/tasks", "/dead-letters", "/charts", "/tasks?state=SUCCESS"]
)
def test_every_page_renders_whole_and_as_a_fragment(client, path):
    whole = client.get(path)
    assert whole.status_code == 200
    assert '<div id="live">' in whole.text
    assert "default-src 'self'" in whole.headers["content-security-policy"]
    joiner = "&" if "?" in path else "?"
    part = client.get(f"{path}{joiner}fragment=1")
    assert part.status_code == 200
    assert "<html" not in part.text


def test_broker_password_is_masked(app, feed):
    app.conf.broker_url = "memory://user:hunter2@localhost/"
    with TestClient(create_app(app, feed=feed)) as client:
        page = client.get("/workers").text
    assert "hunter2" not in page
    assert "user:***@localhost" in page


def test_task_page_reads_the_backend_and_escapes_args(app, client):
    long_args = ["<script>alert(1)</script>" + "x" * 500]
    app.backend.store(
        ResultMeta(task_id="t-1", status="SUCCESS", result=3, name="tasks.add", args=long_args)
    )
    page = client.get("/tasks/t-1").text
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "x" * 300 not in page  # truncated
    assert "tasks.add" in page
    assert "SUCCESS" in page


def test_unknown_task_is_a_404_naming_it(client):
    response = client.get("/tasks/nope")
    assert response.status_code == 404
    assert "nope" in response.text


def test_task_search_finds_tasks_from_events(client, feed):
    now = time.time()
    feed.fold({"type": "task-received", "uuid": "a1", "name": "tasks.add", "timestamp": now})
    feed.fold({"type": "task-succeeded", "uuid": "a1", "runtime": 0.5, "timestamp": now})
    feed.fold({"type": "task-received", "uuid": "b2", "name": "tasks.mul", "timestamp": now})
    found = client.get("/tasks?name=add&state=SUCCESS&since=5m").text
    assert 'data-id="a1"' in found
    assert 'data-id="b2"' not in found
    assert client.get("/tasks?state=BOGUS").status_code == 400


def test_actions_refuse_a_post_without_the_csrf_token(app, client):
    app.backend.store(ResultMeta(task_id="t-2", status="STARTED", name="tasks.add"))
    response = client.post("/actions/revoke", data={"task_id": "t-2"}, follow_redirects=False)
    assert response.status_code == 403
    assert app.backend.get("t-2").status == "STARTED"


def test_actions_refuse_a_get(client):
    assert client.get("/actions/revoke").status_code == 405


def test_revoke_with_the_token_records_the_revocation(app, client):
    app.backend.store(ResultMeta(task_id="t-3", status="STARTED", name="tasks.add"))
    token = _token(client, "/tasks/t-3")
    response = client.post(
        "/actions/revoke",
        data={"task_id": "t-3", "csrf_token": token, "next": "/tasks/t-3"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"].startswith("/tasks/t-3?notice=revoked")
    assert app.backend.get("t-3").status == "REVOKED"


def test_a_cross_origin_post_is_refused(client):
    token = _token(client)
    response = client.post(
        "/actions/purge-dead-letters",
        data={"csrf_token": token, "confirm": "yes"},
        headers={"Origin": "http://evil.example"},
        follow_redirects=False,
    )
    assert response.status_code == 403


def test_purging_a_queue_needs_its_name_as_confirmation(app, client):
    app.send_task("tasks.add", (1, 2))
    token = _token(client)
    queue = app.conf.task_default_queue
    refused = client.post(
        "/actions/purge-queue", data={"csrf_token": token, "queue": queue, "confirm": "yes"}
    )
    assert refused.status_code == 400
    assert app.broker.size(queue) == 1
    done = client.post(
        "/actions/purge-queue",
        data={"csrf_token": token, "queue": queue, "confirm": queue},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert app.broker.size(queue) == 0


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/", "/\\evil.example/", "evil"]
)
def test_redirect_after_an_action_stays_on_this_site(client, target):
    token = _token(client)
    response = client.post(
        "/actions/purge-dead-letters",
        data={"csrf_token": token, "confirm": "yes", "next": target},
        follow_redirects=False,
    )
    assert response.headers["location"].startswith("/dead-letters?notice=purged")


def test_chart_draws_a_lone_point_and_gaps():
    from celeriac.dashboard.pages.charts import chart

    drawn = chart([None, 1.0, None, 2.0, 2.0], unit="s")
    assert len(drawn["lines"]) == 2
    assert all(len(line.split()) >= 2 for line in drawn["lines"])
    assert drawn["top"] == 2.0


def test_queue_page_shows_what_waits(app, client):
    app.send_task("tasks.add", (1, 2))
    app.send_task("tasks.add", (3, 4))
    assert app.broker.depth(app.conf.task_default_queue).ready == 2
    html = client.get("/queues?fragment=1").text
    row = html[html.index(f"<td>{app.conf.task_default_queue}</td>") :]
    assert '<td class="n">2</td>' in row.split("</tr>")[0]


def test_group_members_are_drawn_side_by_side(app, client):
    from celeriac.result import AsyncResult, GroupResult

    for member in ("m1", "m2"):
        app.backend.store(
            ResultMeta(task_id=member, status="SUCCESS", result=1, name="t", group_id="g")
        )
    GroupResult("g", [AsyncResult("m1", app=app), AsyncResult("m2", app=app)], app=app).save()
    page = client.get("/tasks/m1?fragment=1").text
    assert 'data-id="m1"' in page
    assert 'data-id="m2"' in page


def test_members_of_an_unsaved_group_are_found_among_the_stored_results(app, client):
    # A plain group or a chord's header is never saved: its members carry its id.
    for member in ("u1", "u2", "u3"):
        app.backend.store(
            ResultMeta(task_id=member, status="SUCCESS", result=1, name="t", group_id="ug")
        )
    app.backend.store(ResultMeta(task_id="other", status="SUCCESS", result=1, name="t"))
    page = client.get("/tasks/u2?fragment=1").text
    for member in ("u1", "u2", "u3"):
        assert f'data-id="{member}"' in page
    assert 'data-id="other"' not in page


def test_rate_limit_action_says_what_happened(client):
    token = _token(client, "/workers")
    response = client.post(
        "/actions/rate-limit",
        data={"csrf_token": token, "task_name": "tasks.add", "rate": "10/m", "next": "/workers"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert "notice=" in response.headers["location"]


def test_the_graph_reaches_the_task_from_its_root_by_parent_links(app, client):
    # A chord's body names its header task as parent, but the header's stored children
    # do not name the body: the way down is the way up.
    app.backend.store(ResultMeta(task_id="head", status="SUCCESS", result=1, name="t"))
    app.backend.store(
        ResultMeta(task_id="body", status="SUCCESS", result=1, name="t", parent_id="head")
    )
    page = client.get("/tasks/body?fragment=1").text
    assert 'data-id="head"' in page
    assert 'data-id="body"' in page


def test_metrics_are_served_in_prometheus_text_format(app, client):
    from prometheus_client.parser import text_string_to_metric_families

    queue = app.conf.task_default_queue
    app.send_task("shop.pay", queue=queue)
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    ready = [
        s.value
        for s in families["celeriac_queue_messages"].samples
        if s.labels == {"queue": queue, "state": "ready"}
    ]
    assert ready == [1.0]
    assert client.post("/metrics").status_code == 405


def test_a_fresh_dashboard_finds_stored_tasks_by_name_and_state(app, client):
    # Stored before this dashboard started (its feed saw no event), with result_extended.
    app.backend.store(ResultMeta(task_id="old-1", status="FAILURE", name="tasks.fetch"))
    app.backend.store(ResultMeta(task_id="old-2", status="SUCCESS", name="tasks.fetch"))
    app.backend.store(ResultMeta(task_id="old-3", status="FAILURE", name="tasks.parse"))
    found = client.get("/tasks?name=fetch&state=FAILURE").text
    assert 'data-id="old-1"' in found
    assert 'data-id="old-2"' not in found
    assert 'data-id="old-3"' not in found
    assert 'data-id="old-2"' in client.get("/tasks?name=fetch").text


def test_search_shows_the_events_record_of_a_task_also_stored(app, client, feed):
    app.backend.store(ResultMeta(task_id="both", status="STARTED", name="tasks.add"))
    now = time.time()
    feed.fold({"type": "task-received", "uuid": "both", "name": "tasks.add", "timestamp": now})
    feed.fold({"type": "task-succeeded", "uuid": "both", "runtime": 0.5, "timestamp": now})
    found = client.get("/tasks?name=add").text
    assert found.count('data-id="both"') == 1
    assert "0.500s" in found
    assert 'data-id="both"' not in client.get("/tasks?state=STARTED").text


def test_search_says_when_the_backend_cannot_list_results(app, client, feed, monkeypatch):
    def cannot(limit: int) -> list[ResultMeta]:
        raise NotImplementedError("no listing")

    monkeypatch.setattr(app.backend, "recent", cannot)
    feed.fold({"type": "task-received", "uuid": "ev-1", "name": "tasks.add"})
    found = client.get("/tasks").text
    assert 'data-id="ev-1"' in found
    assert "cannot list its results" in found


def test_search_reads_the_backend_once_per_refresh_window(app, client, monkeypatch):
    reads: list[int] = []
    real = app.backend.recent

    def counted(limit: int) -> list[ResultMeta]:
        reads.append(limit)
        found: list[ResultMeta] = real(limit)
        return found

    monkeypatch.setattr(app.backend, "recent", counted)
    app.backend.store(ResultMeta(task_id="s-1", status="SUCCESS", name="tasks.add"))
    for _ in range(3):
        assert 'data-id="s-1"' in client.get("/tasks?fragment=1").text
    assert reads == [sources.SEARCH_STORED]
    monkeypatch.setattr(sources, "SEARCH_STORED_FOR", 0.0)
    app.backend.store(ResultMeta(task_id="s-2", status="SUCCESS", name="tasks.add"))
    assert 'data-id="s-2"' in client.get("/tasks?fragment=1").text
    assert len(reads) == 2
