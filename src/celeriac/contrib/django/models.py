"""The ORM result backend's tables: task results, saved groups, chord counters.

Each task result keeps Celery's stored record whole in `meta` (encoded by the result
serializer, so a read gives back exactly what was stored) and copies the fields worth
searching and showing in the admin into columns of their own.
"""

from __future__ import annotations

from django.db import models


class TaskResult(models.Model):
    """The stored result of one task."""

    task_id = models.CharField("task id", max_length=255, unique=True)
    task_name = models.CharField("task name", max_length=255, null=True, db_index=True)
    status = models.CharField("state", max_length=50, default="PENDING", db_index=True)
    result = models.TextField("result", null=True, help_text="The value, as JSON, for reading")
    traceback = models.TextField("traceback", null=True)
    worker = models.CharField("worker", max_length=255, null=True, db_index=True)
    group_id = models.CharField("group id", max_length=255, null=True, db_index=True)
    date_created = models.DateTimeField("created", auto_now_add=True, db_index=True)
    date_done = models.DateTimeField("done", null=True, db_index=True)
    content_type = models.CharField("content type", max_length=128)
    meta = models.BinaryField("stored record")

    class Meta:
        verbose_name = "task result"
        ordering = ("-date_done",)

    def __str__(self) -> str:
        return f"<Task result: {self.task_id} {self.status}>"


class GroupResult(models.Model):
    """A group saved by `GroupResult.save()`."""

    group_id = models.CharField("group id", max_length=255, unique=True)
    date_created = models.DateTimeField("created", auto_now_add=True, db_index=True)
    content_type = models.CharField("content type", max_length=128)
    result = models.BinaryField("stored group")

    class Meta:
        verbose_name = "group result"
        ordering = ("-date_created",)

    def __str__(self) -> str:
        return f"<Group result: {self.group_id}>"


class ChordCounter(models.Model):
    """How far the header of one chord has come."""

    group_id = models.CharField("group id", max_length=255, unique=True)
    size = models.IntegerField("header size", null=True)
    parts = models.JSONField("finished parts", default=list)

    class Meta:
        verbose_name = "chord counter"

    def __str__(self) -> str:
        return f"<Chord: {self.group_id} {len(self.parts)}/{self.size}>"


class Revocation(models.Model):
    """One entry of the revocation log every worker follows (`app.control.revoke`)."""

    task_id = models.CharField("task id", max_length=255, db_index=True)
    terminate = models.BooleanField("terminate", default=False)
    at = models.FloatField("revoked at (epoch seconds)", db_index=True)

    class Meta:
        verbose_name = "revocation"

    def __str__(self) -> str:
        return f"<Revocation: {self.task_id}>"
