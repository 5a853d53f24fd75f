"""The asyncq tasks that run functions decorated with Django's ``@task`` on asyncq workers.

A Django task is sent as a message of one of two runner tasks (``asyncq.django.run`` for
``async def`` functions, on the worker's loop; ``asyncq.django.run_sync`` for plain functions,
in the worker's thread pool) whose arguments are the function's import path and its
arguments. Next to the task's own result record the backend keeps an *envelope* record
(``<id>.django``: path, arguments, backend alias, enqueue time), written before the message
is sent; the two together make Django's ``TaskResult``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from asyncq.exceptions import ConfigurationError
from asyncq.states import State

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = ["RUN_ASYNC", "RUN_SYNC", "envelope_id", "register_runners"]

RUN_ASYNC = "asyncq.django.run"
RUN_SYNC = "asyncq.django.run_sync"


def envelope_id(task_id: str) -> str:
    """The id of the record holding a Django task's path, arguments and enqueue time."""
    return f"{task_id}.django"


def _now() -> datetime:
    from django.utils import timezone

    now: datetime = timezone.now()
    return now


def _load(path: str) -> Any:
    from django.utils.module_loading import import_string

    from asyncq.contrib.django.tasks_api import Task

    try:
        task = import_string(path)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import the Django task {path!r}: {exc}") from exc
    if not isinstance(task, Task):
        raise ConfigurationError(f"{path!r} is {task!r}, not a function decorated with Django's @task")
    return task


def _json(value: Any) -> Any:
    # Django's contract: return values are JSON; anything else fails the task, as in Django's backends.
    return json.loads(json.dumps(value))


def _running_result(task: Any, task_id: str, envelope: dict[str, Any], started: datetime, worker: str) -> Any:
    from asyncq.contrib.django.tasks_api import TaskResult, TaskResultStatus

    enqueued = envelope.get("enqueued_at")
    return TaskResult(
        task=task,
        id=task_id,
        status=TaskResultStatus.RUNNING,
        enqueued_at=datetime.fromisoformat(enqueued) if enqueued else None,
        started_at=started,
        finished_at=None,
        last_attempted_at=started,
        args=list(envelope.get("args", [])),
        kwargs=dict(envelope.get("kwargs", {})),
        backend=str(envelope.get("backend", "default")),
        errors=[],
        worker_ids=[worker],
    )


class _Run:
    """What both runners do around the call: load, record the start, signal, record the outcome."""

    def __init__(
        self, bound: Any, path: str, args: list[Any], kwargs: dict[str, Any], envelope: dict[str, Any]
    ):
        self.task = _load(path)
        self.started = _now()
        self.worker = bound.request.hostname or "eager"
        self.result = _running_result(self.task, bound.request.id, envelope, self.started, self.worker)
        self.meta = {"started_at": self.started.isoformat(), "worker_id": self.worker}
        self.args = [self.context(), *args] if self.task.takes_context else list(args)
        self.kwargs = kwargs

    def context(self) -> Any:
        from asyncq.contrib.django.tasks_api import TaskContext

        return TaskContext(task_result=self.result)

    def signal_start(self) -> None:
        from asyncq.contrib.django.tasks_api import task_started

        task_started.send(sender=type(self.task.get_backend()), task_result=self.result)

    def finish(self, value: Any = None, exc: BaseException | None = None) -> dict[str, Any]:
        from asyncq.contrib.django.tasks_api import TaskError, TaskResultStatus, task_finished

        finished = _now()
        object.__setattr__(self.result, "finished_at", finished)
        if exc is None:
            object.__setattr__(self.result, "status", TaskResultStatus.SUCCESSFUL)
            object.__setattr__(self.result, "_return_value", value)
        else:
            import traceback

            error = TaskError(
                exception_class_path=f"{type(exc).__module__}.{type(exc).__qualname__}",
                traceback="".join(traceback.format_exception(exc)),
            )
            object.__setattr__(self.result, "status", TaskResultStatus.FAILED)
            self.result.errors.append(error)
        task_finished.send(sender=type(self.task.get_backend()), task_result=self.result)
        return {**self.meta, "finished_at": finished.isoformat(), "return_value": value}


async def run_async(
    self: Any, path: str, args: list[Any], kwargs: dict[str, Any], envelope: dict[str, Any]
) -> Any:
    """Run an ``async def`` Django task on the worker's event loop."""
    from asgiref.sync import sync_to_async
    from django.db import close_old_connections

    # The async ORM runs queries in asgiref's one thread-sensitive thread: recycle its connections.
    recycle = sync_to_async(close_old_connections, thread_sensitive=True)
    await recycle()
    try:
        run = _Run(self, path, args, kwargs, envelope)
        await self.update_state(State.STARTED, meta=run.meta)
        run.signal_start()
        try:
            value = _json(await run.task.func(*run.args, **run.kwargs))
        except Exception as exc:
            run.finish(exc=exc)
            raise
        return run.finish(value)
    finally:
        await recycle()


def run_sync(self: Any, path: str, args: list[Any], kwargs: dict[str, Any], envelope: dict[str, Any]) -> Any:
    """Run a plain Django task in the worker's thread pool, with fresh database connections."""
    from django.db import close_old_connections

    # A pool thread lives for many tasks: drop connections that are broken or past
    # CONN_MAX_AGE before and after each, as Django does around a request.
    close_old_connections()
    try:
        run = _Run(self, path, args, kwargs, envelope)
        self.update_state(State.STARTED, meta=run.meta)
        run.signal_start()
        try:
            value = _json(run.task.func(*run.args, **run.kwargs))
        except Exception as exc:
            run.finish(exc=exc)
            raise
        return run.finish(value)
    finally:
        close_old_connections()


def register_runners(app: App) -> None:
    """Register the two runner tasks on ``app`` (idempotent), so its workers run Django tasks."""
    if RUN_ASYNC not in app.tasks:
        app.task(name=RUN_ASYNC, bind=True)(run_async)
    if RUN_SYNC not in app.tasks:
        app.task(name=RUN_SYNC, bind=True)(run_sync)
