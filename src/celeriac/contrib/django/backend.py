"""`django-db`: results stored through Django's ORM, in the project's own database.

Set `CELERY_RESULT_BACKEND = "django-db"` (or `django-db://`) and add
`"celeriac.contrib.django"` to `INSTALLED_APPS`; `manage.py migrate` creates the tables and
the admin lists the results. `result_backend_transport_options={"database": "alias"}`
picks another of the project's databases.

Records are Celery's (the same fields as every other backend) and a stored SUCCESS is
final, as the contract wants. Waiting polls with a growing interval (the base's `wait`):
a SQL database has no notification every engine shares. Chords join under a row lock
(`select_for_update`), so the call that completes the header is the only one to get
the parts.
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from celeriac import states
from celeriac._time import UTC
from celeriac.backends.base import (
    REVOCATION_TTL,
    ChordPart,
    ResultBackend,
    ResultMeta,
    Revocation,
)
from celeriac.exceptions import BackendError, ImproperlyConfigured, ResultLost

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

__all__ = ["DjangoBackend"]

T = TypeVar("T")

# Transport option naming the database alias (Django's DATABASES key).
DATABASE_OPTION = "database"


def _ready_django() -> None:
    try:
        import django
        from django.apps import apps
    except ImportError as exc:
        raise ImproperlyConfigured(
            "the django-db result backend needs Django: pip install 'celeriac[django]'"
        ) from exc
    if not apps.ready:
        django.setup()
    if not apps.is_installed("celeriac.contrib.django"):
        raise ImproperlyConfigured(
            "the django-db result backend keeps its tables in the app "
            "'celeriac.contrib.django': add it to INSTALLED_APPS and run manage.py migrate"
        )


class DjangoBackend(ResultBackend):
    """Results in the project's database, through the ORM."""

    schemes: ClassVar[tuple[str, ...]] = ("django-db",)
    supports_revocation: ClassVar[bool] = True

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        _ready_django()
        self._db = str(self.transport_options.get(DATABASE_OPTION, "default"))

    @contextlib.contextmanager
    def _errors(self, what: str, *, lost: bool = False) -> Iterator[None]:
        from django.db import DatabaseError

        try:
            yield
        except DatabaseError as exc:
            error = ResultLost if lost else BackendError
            raise error(f"cannot {what} in the database {self._db!r}: {exc}") from exc

    def _run(self, what: str, work: Callable[[], T], *, lost: bool = False) -> T:
        with self._errors(what, lost=lost):
            return work()

    # -- task results ----------------------------------------------------------------

    def store(self, meta: ResultMeta) -> None:
        from django.db import IntegrityError, transaction

        from celeriac.contrib.django.models import TaskResult

        fields = {
            "task_name": meta.name,
            "status": meta.status,
            "result": _readable(meta.result),
            "traceback": meta.traceback,
            "worker": meta.worker,
            "group_id": meta.group_id,
            "date_done": _column_datetime(meta.date_done),
            "content_type": self.serializer.content_type,
            "meta": self.encode_meta(meta),
        }
        rows = TaskResult.objects.using(self._db)

        def write() -> None:
            # A stored SUCCESS is final: only a row in another state is overwritten.
            if rows.filter(task_id=meta.task_id).exclude(status=states.SUCCESS).update(**fields):
                return
            if rows.filter(task_id=meta.task_id).exists():
                return
            try:
                with transaction.atomic(using=self._db):
                    rows.create(task_id=meta.task_id, **fields)
            except IntegrityError:
                # Written meanwhile by another process: the same rule again.
                rows.filter(task_id=meta.task_id).exclude(status=states.SUCCESS).update(**fields)

        self._run(f"store the result of {meta.task_id}", write, lost=True)

    def get(self, task_id: str) -> ResultMeta | None:
        return self.get_many([task_id]).get(task_id)

    def get_many(self, task_ids: Sequence[str]) -> dict[str, ResultMeta]:
        from celeriac.contrib.django.models import TaskResult

        if not task_ids:
            return {}

        def read() -> list[tuple[str, bytes]]:
            query = TaskResult.objects.using(self._db).filter(task_id__in=list(task_ids))
            return [(tid, bytes(raw)) for tid, raw in query.values_list("task_id", "meta")]

        found = self._run(f"read {len(task_ids)} result(s)", read)
        return {tid: self.decode_meta(raw, task_id=tid) for tid, raw in found}

    def forget(self, task_id: str) -> None:
        from celeriac.contrib.django.models import TaskResult

        self._run(
            f"forget {task_id}",
            lambda: TaskResult.objects.using(self._db).filter(task_id=task_id).delete(),
        )

    def cleanup(self) -> int:
        """Delete results done more than `result_expires` seconds ago."""
        from celeriac.contrib.django.models import TaskResult

        if self.expires is None:
            return 0
        cutoff = _column_datetime(
            datetime.fromtimestamp(self.clock.time(), UTC) - timedelta(seconds=self.expires)
        )
        deleted, _ = self._run(
            "delete expired results",
            lambda: TaskResult.objects.using(self._db).filter(date_done__lt=cutoff).delete(),
        )
        return int(deleted)

    # -- revocations -----------------------------------------------------------------

    def revoke(self, task_ids: Sequence[str], *, terminate: bool = False) -> None:
        from django.db import transaction

        from celeriac.contrib.django.models import Revocation

        now = self.clock.time()
        rows = Revocation.objects.using(self._db)

        def write() -> None:
            with transaction.atomic(using=self._db):
                rows.bulk_create(
                    [Revocation(task_id=tid, terminate=terminate, at=now) for tid in task_ids]
                )
                rows.filter(at__lt=now - REVOCATION_TTL).delete()

        self._run(f"revoke {len(task_ids)} task(s)", write)

    def revoked_since(self, cursor: float) -> tuple[list[Revocation], float]:
        from celeriac.contrib.django.models import Revocation as Row

        def read() -> list[tuple[str, bool, float]]:
            query = Row.objects.using(self._db).filter(at__gte=cursor).order_by("at")
            return list(query.values_list("task_id", "terminate", "at"))

        found = [Revocation(tid, stop, at) for tid, stop, at in self._run("read revocations", read)]
        # A task revoked with terminate and again without still gets terminated.
        stop = {r.task_id for r in found if r.terminate}
        found = [Revocation(r.task_id, r.task_id in stop, r.at) for r in found]
        return found, max([cursor, *(r.at for r in found)])

    # -- groups ----------------------------------------------------------------------

    def save_group(self, group_id: str, result: Any) -> None:
        from celeriac.contrib.django.models import GroupResult

        self._run(
            f"save group {group_id}",
            lambda: GroupResult.objects.using(self._db).update_or_create(
                group_id=group_id,
                defaults={
                    "content_type": self.serializer.content_type,
                    "result": self.encode({"result": result}),
                },
            ),
        )

    def get_group(self, group_id: str) -> Any | None:
        from celeriac.contrib.django.models import GroupResult

        def read() -> bytes | None:
            row = (
                GroupResult.objects.using(self._db)
                .filter(group_id=group_id)
                .values_list("result", flat=True)
                .first()
            )
            return None if row is None else bytes(row)

        raw = self._run(f"read group {group_id}", read)
        if raw is None:
            return None
        value = self.decode(raw)
        return value.get("result") if isinstance(value, dict) else None

    def delete_group(self, group_id: str) -> None:
        from celeriac.contrib.django.models import GroupResult

        self._run(
            f"delete group {group_id}",
            lambda: GroupResult.objects.using(self._db).filter(group_id=group_id).delete(),
        )

    # -- chords ----------------------------------------------------------------------

    def set_chord_size(self, group_id: str, size: int) -> None:
        from celeriac.contrib.django.models import ChordCounter

        self._run(
            f"set the size of chord {group_id}",
            lambda: ChordCounter.objects.using(self._db).update_or_create(
                group_id=group_id, defaults={"size": size}
            ),
        )

    def chord_part_return(
        self,
        group_id: str,
        *,
        index: int | None,
        task_id: str,
        status: str,
        result: Any,
    ) -> list[ChordPart] | None:
        from django.db import transaction

        from celeriac.contrib.django.models import ChordCounter

        def join() -> list[ChordPart] | None:
            with transaction.atomic(using=self._db):
                counters = ChordCounter.objects.using(self._db).select_for_update()
                counter, _ = counters.get_or_create(group_id=group_id)
                parts: list[list[Any]] = list(counter.parts)
                if any(part[1] == task_id for part in parts):
                    return None  # a redelivered part is counted once
                order = float(index) if index is not None else float(len(parts))
                parts.append([order, task_id, status, result])
                if counter.size is None or len(parts) < counter.size:
                    counter.parts = parts
                    counter.save(update_fields=["parts"])
                    return None
                counter.delete()
            return [ChordPart(*part) for part in sorted(parts, key=lambda part: part[0])]

        return self._run(f"join chord {group_id}", join)


def _column_datetime(value: datetime | None) -> datetime | None:
    """An aware instant as the project stores datetimes: aware with `USE_TZ`, else naive
    in Django's `TIME_ZONE` (Django refuses aware values then)."""
    from django.conf import settings
    from django.utils import timezone

    if value is None or settings.USE_TZ:
        return value
    naive: datetime = timezone.make_naive(value, timezone.get_default_timezone())
    return naive


def _readable(value: Any) -> str | None:
    """The value as JSON text for the admin (never read back)."""
    if value is None:
        return None
    try:
        return json.dumps(value, default=repr)
    except (TypeError, ValueError):
        return repr(value)
