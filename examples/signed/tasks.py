"""Signed task messages: only bodies signed by a trusted certificate run.

The same settings as Celery's message signing; a stock Celery worker configured the same
way runs these messages too. Keys come from `make_keys.py` (run.py makes them).
"""

from __future__ import annotations

from pathlib import Path

from celeriac import Celeriac

KEYS = Path(__file__).resolve().parent / "keys"

app = Celeriac(
    "tasks",
    broker="sqlite:///signed.db",
    task_serializer="auth",
    accept_content=["auth"],
    result_accept_content=["json"],
    security_key=str(KEYS / "producer.key"),
    security_certificate=str(KEYS / "producer.pem"),
    security_cert_store=str(KEYS / "trusted"),
)
app.setup_security()


@app.task
def add(x: int, y: int) -> int:
    return x + y
