"""Celery task protocol v2: the message envelope, serializers and the task-call codec.

Nothing here knows about an app or a transport: a `Message` is bytes plus headers and
properties, the same whether it travels over SQLite, Redis or AMQP.
"""
