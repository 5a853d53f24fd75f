"""Database connections of tasks that run in a worker's thread pool.

A worker's pool threads live for many tasks, and Django only recycles a thread's connection
around a *request* (``close_old_connections`` on ``request_started``/``request_finished``).
Without the same around each task, a thread keeps a broken connection after the database
restarts (every later task on that thread fails) and ignores ``CONN_MAX_AGE``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asyncq.task import current_task

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = ["recycle_connections"]

_WRAPPED = "__asyncq_recycles_connections__"


def _on_worker() -> bool:
    task = current_task()
    # Eager calls (``add(2, 3)`` in a view) run inside the caller's request or transaction:
    # closing its connection there would break it.
    return task is not None and not task.request.is_eager


def _recycling(fn: Callable[..., Any]) -> Callable[..., Any]:
    from django.db import close_old_connections

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not _on_worker():
            return fn(*args, **kwargs)
        close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            close_old_connections()

    setattr(run, _WRAPPED, True)
    return run


def recycle_connections(app: App) -> int:
    """Make every thread-pool task of ``app`` recycle its connections as a request does.

    Unusable connections and those past ``CONN_MAX_AGE`` are closed before and after each
    task (with ``CONN_HEALTH_CHECKS`` a dead connection is replaced before the first query).
    Idempotent; returns how many tasks it changed.
    """
    changed = 0
    for task in app.tasks.values():
        if task.options.executor == "thread" and not getattr(task.run, _WRAPPED, False):
            task.run = _recycling(task.run)
            changed += 1
    return changed
