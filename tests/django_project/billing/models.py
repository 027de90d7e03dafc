from __future__ import annotations

from django.db import models


class Invoice(models.Model):
    reference = models.CharField(max_length=100, unique=True)
    created = models.DateTimeField(auto_now_add=True)
