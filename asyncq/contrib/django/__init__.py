"""Django integration: the App from settings, tasks.py autodiscovery, on-commit sends, a worker command.

Add ``"asyncq.contrib.django"`` to ``INSTALLED_APPS`` and configure asyncq in the settings,
either as one dict or as one ``ASYNCQ_<SETTING>`` per setting (both may be used; a setting
given both ways is an error)::

    ASYNCQ = {"broker_url": "redis://127.0.0.1:6379/0", "task_default_queue": "web"}
    ASYNCQ_WORKER_CONCURRENCY = 50

Tasks go in each installed app's ``tasks.py`` (imported at start-up)::

    from asyncq.contrib.django import app, enqueue_on_commit

    @app.task
    def send_confirmation(order_id: int) -> None: ...

    with transaction.atomic():
        order = Order.objects.create(...)
        result = enqueue_on_commit(send_confirmation, order.id)   # sent only if this commits

``python manage.py asyncq_worker`` runs a worker. Functions decorated with Django's own
``@task`` run on asyncq workers through :class:`AsyncqBackend`
(``TASKS = {"default": {"BACKEND": "asyncq.contrib.django.AsyncqBackend"}}``). See
docs/integrations/django.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asyncq.contrib.django.conf import get_app
from asyncq.contrib.django.transaction import apply_on_commit, enqueue_on_commit

if TYPE_CHECKING:
    from asyncq.app import App
    from asyncq.contrib.django.backend import AsyncqBackend

    app: App

__all__ = ["AsyncqBackend", "app", "apply_on_commit", "enqueue_on_commit", "get_app"]


def __getattr__(name: str) -> Any:
    # Resolved on first use: the App needs the settings, and the backend needs Django's task
    # framework (django.tasks, or the django-tasks backport before Django 6.0).
    if name == "app":
        return get_app()
    if name == "AsyncqBackend":
        from asyncq.contrib.django.backend import AsyncqBackend

        return AsyncqBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
