"""URLs of the example project."""

from __future__ import annotations

from django.urls import path
from shop import views

urlpatterns = [
    path("orders/", views.create_order),
    path("orders/<int:order_id>/", views.order_status),
    path("reports/", views.start_report),
    path("reports/<str:result_id>/", views.report_result),
]
