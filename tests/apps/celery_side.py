"""The Celery half of the interop tests: a real Celery app, run as producer or worker subprocess.

Its broker comes from ``CELERY_INTEROP_URL`` (a Redis db of the tests' own, or RabbitMQ) and
its result backend from ``CELERY_INTEROP_BACKEND`` (default: the broker URL; ``rpc://`` on RabbitMQ).
"""

from __future__ import annotations

import os

from celery import Celery

URL = os.environ.get("CELERY_INTEROP_URL", "redis://127.0.0.1:6379/13")

BACKEND = os.environ.get("CELERY_INTEROP_BACKEND", URL)

celery_app = Celery("celery_side", broker=URL, backend=BACKEND)
celery_app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # No AMQP heartbeats: with them a worker's warm shutdown on RabbitMQ waits ~15 s for its
    # heartbeat thread; the tests' connections are loopback and short-lived.
    broker_heartbeat=0,
)


@celery_app.task(name="celery_side.mul")
def mul(x: int, y: int) -> int:
    """A plain Celery task."""
    return x * y


@celery_app.task(name="celery_side.boom")
def boom(key: str) -> None:
    """Fails with a builtin exception type the asyncq caller can rebuild."""
    raise KeyError(key)


@celery_app.task(name="celery_side.note_failure")
def note_failure(task_id: str) -> str:
    """An errback: Celery sends it the failed task's id."""
    return f"failed: {task_id}"


@celery_app.task(name="celery_side.flaky", bind=True, max_retries=3)
def flaky(self: object, until: int) -> int:
    """Retries (1 s countdown... 0.2 s here) until it has been retried ``until`` times."""
    request = self.request  # type: ignore[attr-defined]
    if request.retries < until:
        raise self.retry(countdown=0.2)  # type: ignore[attr-defined]
    return int(request.retries)
