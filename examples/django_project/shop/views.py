"""Views: create an order and confirm it after the commit; run and read a Django task."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from asyncq.contrib.django import enqueue_on_commit
from shop.models import Order
from shop.tasks import count_orders, send_confirmation


class OrderRejectedError(Exception):
    """The order was refused after it was written: its transaction rolls back."""


@csrf_exempt
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    """Create an order; its confirmation task is sent only once the order is committed.

    ``reject=1`` refuses the order after it was written and the task was asked for: the
    transaction rolls back, and the task is never sent.
    """
    try:
        with transaction.atomic():
            order = Order.objects.create(email=request.POST["email"])
            result = enqueue_on_commit(send_confirmation, order.id)  # the id is known at once
            if request.POST.get("reject") == "1":
                raise OrderRejectedError
    except OrderRejectedError:
        return JsonResponse({"rejected": True, "task_id": result.id}, status=409)
    return JsonResponse({"order_id": order.id, "task_id": result.id}, status=201)


@require_GET
def order_status(request: HttpRequest, order_id: int) -> JsonResponse:
    """Whether the order's confirmation task has run."""
    order = Order.objects.get(pk=order_id)
    return JsonResponse({"order_id": order.id, "confirmation_sent": order.confirmed_at is not None})


@csrf_exempt
@require_POST
def start_report(request: HttpRequest) -> JsonResponse:
    """Enqueue a Django task; answer with its result id."""
    result = count_orders.enqueue(request.POST.get("domain", "example.com"))
    return JsonResponse({"result_id": result.id}, status=202)


@require_GET
def report_result(request: HttpRequest, result_id: str) -> JsonResponse:
    """Read a Django task's result through Django's API."""
    result = count_orders.get_result(result_id)
    succeeded = result.status == "SUCCESSFUL"
    body = {"status": str(result.status), "return_value": result.return_value if succeeded else None}
    return JsonResponse(body)
