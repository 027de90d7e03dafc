from celeriac import shared_task
from shop.models import Order


@shared_task
def confirm(order_id):
    order = Order.objects.get(pk=order_id)
    order.confirmed = True
    order.save()
    return order.reference
