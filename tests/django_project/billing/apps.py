from __future__ import annotations

import os

from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self) -> None:
        if os.environ.get("TEST_CONNECT_AT_START"):
            # A project whose start-up touches the database: the worker must not hand
            # this connection to its children.
            from django.db import connection

            connection.ensure_connection()
