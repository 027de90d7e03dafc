from django.db import transaction
from django.http import JsonResponse

from shop.models import Order
from shop.tasks import confirm


def place_order(request, reference):
    with transaction.atomic():
        order = Order.objects.create(reference=reference)
        # Sent only once the order is committed: the worker always finds it.
        confirm.delay_on_commit(order.pk)
    return JsonResponse({"order": order.pk})
