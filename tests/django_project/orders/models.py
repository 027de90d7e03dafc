from __future__ import annotations

from django.db import models


class Order(models.Model):
    reference = models.CharField(max_length=100, unique=True)
    shipped = models.BooleanField(default=False)
    shipped_by = models.IntegerField(null=True)
