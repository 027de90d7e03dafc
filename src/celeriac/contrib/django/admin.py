"""Admin pages for stored results (read-only: results are written by workers)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from celeriac.contrib.django.models import GroupResult, TaskResult


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(TaskResult)
class TaskResultAdmin(_ReadOnly):
    list_display = ("task_id", "task_name", "status", "worker", "date_done")
    list_filter = ("status", "task_name", "worker")
    search_fields = ("task_id", "task_name", "group_id")
    exclude = ("meta",)
    date_hierarchy = "date_done"


@admin.register(GroupResult)
class GroupResultAdmin(_ReadOnly):
    list_display = ("group_id", "date_created")
    search_fields = ("group_id",)
    exclude = ("result",)
