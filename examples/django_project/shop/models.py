"""The example's one model: an order, confirmed by a task once it is committed."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    """An order; ``confirmed_at`` is set by the ``send_confirmation`` task."""

    email = models.EmailField()
    created_at = models.DateTimeField(auto_now_add=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "shop"
