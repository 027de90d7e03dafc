from __future__ import annotations

from billing.models import Invoice
from celeriac import shared_task


@shared_task
def invoice(reference: str) -> int:
    return int(Invoice.objects.create(reference=reference).pk)
