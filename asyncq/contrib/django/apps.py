"""The Django application config: builds the App at start-up and imports every app's tasks.py."""

from __future__ import annotations

from django.apps import AppConfig


class AsyncqConfig(AppConfig):  # type: ignore[misc]  # Django is untyped
    """``"asyncq.contrib.django"`` in INSTALLED_APPS."""

    name = "asyncq.contrib.django"
    label = "asyncq"
    verbose_name = "asyncq"

    def ready(self) -> None:
        """Build the App from the settings (bad settings fail at start-up), import tasks.py modules.

        Then every thread-pool task gets its database connections recycled around each run
        (see :mod:`asyncq.contrib.django.db`).
        """
        from django.conf import settings
        from django.utils.module_loading import autodiscover_modules

        from asyncq.contrib.django.conf import get_app
        from asyncq.contrib.django.db import recycle_connections
        from asyncq.contrib.django.runner import register_runners

        app = get_app()
        register_runners(app)
        if getattr(settings, "ASYNCQ_AUTODISCOVER", True):
            autodiscover_modules("tasks")
        recycle_connections(app)
