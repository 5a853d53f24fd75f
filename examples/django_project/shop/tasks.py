"""The shop's tasks: asyncq tasks (``@app.task``) and Django tasks (``@task``), all run by asyncq workers.

``asyncq.contrib.django`` imports this module at start-up (autodiscovery), in the web
process and in ``manage.py asyncq_worker`` alike.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from asyncq.contrib.django import app
from shop.models import Order

try:
    from django.tasks import TaskContext, task
except ImportError:  # Django < 6.0: the backport
    from django_tasks import TaskContext, task


@app.task(max_retries=3, default_retry_delay=1)
def send_confirmation(order_id: int) -> str:
    """Mark the order confirmed (a mail would go out here); runs in the worker's thread pool.

    Sent with ``enqueue_on_commit``, it only ever runs for a committed order: without it, a
    worker could look the order up before the view's transaction commits and not find it.
    """
    order = Order.objects.get(pk=order_id)
    order.confirmed_at = timezone.now()
    order.save(update_fields=["confirmed_at"])
    return order.email


@task()
def count_orders(email_domain: str) -> dict[str, int]:
    """A Django task: count the orders of one e-mail domain."""
    return {"orders": Order.objects.filter(email__endswith=f"@{email_domain}").count()}


@task(queue_name="reports", priority=50)
async def confirmed_share() -> float:
    """An ``async def`` Django task on the "reports" queue: it runs on the worker's event loop."""
    total = await Order.objects.acount()
    confirmed = await Order.objects.filter(confirmed_at__isnull=False).acount()
    return confirmed / total if total else 0.0


@task()
def refuse(reason: str) -> None:
    """A Django task that fails: its error is readable through Django's result API."""
    raise ValueError(reason)


@task(takes_context=True)
def describe_attempt(context: TaskContext, label: str) -> dict[str, Any]:
    """A Django task that receives its context (its own result id and attempt number)."""
    return {"label": label, "result_id": context.task_result.id, "attempt": context.attempt}
