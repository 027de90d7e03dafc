from django.db import models


class Order(models.Model):
    reference = models.CharField(max_length=100, unique=True)
    confirmed = models.BooleanField(default=False)
