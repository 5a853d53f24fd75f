"""Settings of the example project: PostgreSQL, asyncq on Redis, Django's tasks on asyncq."""

from __future__ import annotations

import os

import django

SECRET_KEY = "example-only-not-secret"  # noqa: S105 - an example project
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
ROOT_URLCONF = "shopsite.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "asyncq.contrib.django",  # builds the App, imports each app's tasks.py, adds asyncq_worker
    "shop",
]
if django.VERSION < (6, 0):
    INSTALLED_APPS.insert(1, "django_tasks")  # the backport of django.tasks

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("EXAMPLE_DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("EXAMPLE_DB_PORT", "5432"),
        "USER": os.environ.get("EXAMPLE_DB_USER", "postgres"),
        "NAME": os.environ.get("EXAMPLE_DB_NAME", "asyncq_example"),
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,  # with asyncq recycling connections per task: no dead ones
    }
}

# asyncq's settings, as one dict and/or as ASYNCQ_<SETTING> (a setting given both ways is an error).
ASYNCQ = {
    "broker_url": os.environ.get("ASYNCQ_BROKER_URL", "redis://127.0.0.1:6379/0"),
    "task_default_retry_delay": 1,
}
ASYNCQ_WORKER_CONCURRENCY = 20

# Django's own task framework, run by asyncq workers.
TASKS = {
    "default": {
        "BACKEND": "asyncq.contrib.django.AsyncqBackend",
        "QUEUES": ["default", "reports"],
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
