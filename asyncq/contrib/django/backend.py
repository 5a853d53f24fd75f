"""AsyncqBackend: Django's task framework (``django.tasks``) on asyncq brokers and workers.

::

    TASKS = {"default": {"BACKEND": "asyncq.contrib.django.AsyncqBackend",
                         "QUEUES": ["default", "emails"],
                         "OPTIONS": {"APP": "myproject.queue:app"}}}   # OPTIONS optional

``my_task.enqueue(...)`` sends the call to asyncq (``aenqueue`` without a thread hop);
``python manage.py asyncq_worker`` runs it; ``get_result(id)`` / ``result.refresh()`` read
its state, return value and errors from asyncq's result backend. Priorities (-100..100) map
onto asyncq's 0..9, ``run_after`` onto ``eta``, and Django's "default" queue onto the App's
``task_default_queue``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from inspect import iscoroutinefunction
from typing import Any

from asyncq.app import App
from asyncq.contrib.django.conf import get_app
from asyncq.contrib.django.runner import RUN_ASYNC, RUN_SYNC, envelope_id, register_runners
from asyncq.contrib.django.tasks_api import (
    BaseTaskBackend,
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_enqueued,
)
from asyncq.exceptions import ConfigurationError
from asyncq.message import Message
from asyncq.result import ResultRecord, decode_record
from asyncq.serializers import json_dumps, json_loads
from asyncq.states import State
from asyncq.sync import SEND_DEADLINE, blocking, ensure_no_running_loop

__all__ = ["AsyncqBackend", "asyncq_priority"]

#: Django's queue name that stands for the App's ``task_default_queue``.
DJANGO_DEFAULT_QUEUE = "default"

_STATUS = {
    State.PENDING: TaskResultStatus.READY,
    State.RECEIVED: TaskResultStatus.READY,
    State.RETRY: TaskResultStatus.READY,
    State.STARTED: TaskResultStatus.RUNNING,
    State.SUCCESS: TaskResultStatus.SUCCESSFUL,
    State.FAILURE: TaskResultStatus.FAILED,
    State.REVOKED: TaskResultStatus.FAILED,
}


def asyncq_priority(priority: int) -> int | None:
    """Django's priority (-100..100, larger first) as asyncq's (0..9); None for Django's default 0."""
    if priority == 0:
        return None
    return max(0, min(9, round((priority + 100) * 9 / 200)))


class AsyncqBackend(BaseTaskBackend):  # type: ignore[misc]  # Django's class is untyped here
    """A ``django.tasks`` backend whose tasks run on asyncq workers."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        path = self.options.get("APP")
        if path:
            from django.utils.module_loading import import_string

            app = import_string(str(path).replace(":", "."))
            if not isinstance(app, App):
                raise ConfigurationError(f"TASKS[{alias!r}]['OPTIONS']['APP']={path!r} is not an asyncq App")
            self.app: App = app
        else:
            self.app = get_app()
        if self.app.backend_url.startswith("rpc:"):
            # rpc:// hands each result to the process that sent the task: get_result, refresh()
            # and a page that polls from another process would never see it.
            raise ConfigurationError(
                f"TASKS[{alias!r}] needs a result backend every process can read (redis://, sqlite://...); "
                "the app's is rpc://: set result_backend"
            )
        register_runners(self.app)

    # -- sending -------------------------------------------------------------------------------

    def _prepare(self, task: Any, args: Any, kwargs: Any) -> tuple[TaskResult, Message, bytes]:
        self.validate_task(task)
        queue = None if task.queue_name == DJANGO_DEFAULT_QUEUE else task.queue_name
        runner = self.app.get_task(RUN_ASYNC if iscoroutinefunction(task.func) else RUN_SYNC)
        from django.utils import timezone

        enqueued = timezone.now()
        envelope = {
            "path": task.module_path,
            "args": list(args),
            "kwargs": dict(kwargs),
            "backend": self.alias,
            "enqueued_at": enqueued.isoformat(),
        }
        message = runner.build_message(
            [envelope["path"], envelope["args"], envelope["kwargs"], envelope],
            queue=queue,
            priority=asyncq_priority(task.priority),
            eta=task.run_after,
        )
        result = TaskResult(
            task=task,
            id=message.id,
            status=TaskResultStatus.READY,
            enqueued_at=enqueued,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=envelope["args"],
            kwargs=envelope["kwargs"],
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        return result, message, json_dumps(envelope)

    async def _send(self, message: Message, envelope: bytes) -> None:
        app = self.app
        await app.connect()
        # The envelope is stored before the message is sent: a worker's records can never
        # precede it, and get_result finds the task's path and arguments from the start.
        ttl = app.conf.result_expires
        await app.backend.set(envelope_id(message.id), envelope, final=True, ttl=float(ttl) if ttl else None)
        await app.send_message(message)

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Send the task to asyncq and return its READY result (blocks until the broker has it)."""
        ensure_no_running_loop(f"{task.name}.enqueue()", f"`await {task.name}.aenqueue(...)`")
        result, message, envelope = self._prepare(task, args, kwargs)
        blocking(self.app, self._send(message, envelope), SEND_DEADLINE)
        task_enqueued.send(type(self), task_result=result)
        return result

    def enqueue_on_commit(
        self, task: Task, args: Any, kwargs: Any, *, using: str | None = None, robust: bool = False
    ) -> TaskResult:
        """Send the task when the transaction of ``using`` commits; return its READY result now.

        Nothing is stored or sent before the commit (so ``get_result`` raises
        TaskResultDoesNotExist until then), and nothing ever after a rollback.
        """
        from django.db import transaction

        ensure_no_running_loop(
            f"enqueue_on_commit({task.name}, ...)", "`sync_to_async` around the transaction"
        )
        result, message, envelope = self._prepare(task, args, kwargs)

        def send() -> None:
            blocking(self.app, self._send(message, envelope), SEND_DEADLINE)
            task_enqueued.send(type(self), task_result=result)

        transaction.on_commit(send, using=using, robust=robust)
        return result

    async def aenqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """:meth:`enqueue` on the running event loop."""
        result, message, envelope = self._prepare(task, args, kwargs)
        await self._send(message, envelope)
        task_enqueued.send(type(self), task_result=result)
        return result

    # -- reading -------------------------------------------------------------------------------

    async def _read(self, result_id: str) -> tuple[ResultRecord | None, dict[str, Any] | None]:
        app = self.app
        await app.connect()
        record, envelope = await app.backend.get_many([result_id, envelope_id(result_id)])
        return (
            None if record is None else decode_record(record, app.serializers),
            None if envelope is None else json_loads(envelope),
        )

    def get_result(self, result_id: str) -> TaskResult:
        """The task's result, read from asyncq's result backend (raises TaskResultDoesNotExist)."""
        ensure_no_running_loop(
            "get_result() / refresh()", "`await aget_result(...)` / `await result.arefresh()`"
        )
        record, envelope = blocking(self.app, self._read(result_id), SEND_DEADLINE)
        return self._result(result_id, record, envelope)

    async def aget_result(self, result_id: str) -> TaskResult:
        """:meth:`get_result` on the running event loop."""
        record, envelope = await self._read(result_id)
        return self._result(result_id, record, envelope)

    def _result(
        self, result_id: str, record: ResultRecord | None, envelope: dict[str, Any] | None
    ) -> TaskResult:
        if envelope is None:
            raise TaskResultDoesNotExist(result_id)
        from django.utils.module_loading import import_string

        task = import_string(envelope["path"])
        status = TaskResultStatus.READY if record is None else _STATUS[record.status]
        times: dict[str, Any] = {}
        if record is not None:
            if record.status == State.SUCCESS and isinstance(record.result, dict):
                times = record.result
            elif record.status == State.STARTED:
                times = record.meta
        started = _when(times.get("started_at"))
        finished = _when(times.get("finished_at")) or (
            _when(record.date_done) if record is not None and record.is_ready else None
        )
        errors = []
        if record is not None and record.status in (State.FAILURE, State.REVOKED):
            errors.append(
                TaskError(
                    exception_class_path=record.exc_type or "asyncq.exceptions.TaskRevokedError",
                    traceback=record.traceback or record.exc_message or "",
                )
            )
        result = TaskResult(
            task=task,
            id=result_id,
            status=status,
            enqueued_at=_when(envelope.get("enqueued_at")),
            started_at=started,
            finished_at=finished,
            last_attempted_at=started,
            args=envelope.get("args", []),
            kwargs=envelope.get("kwargs", {}),
            backend=envelope.get("backend", self.alias),
            errors=errors,
            worker_ids=[times["worker_id"]] if times.get("worker_id") else [],
        )
        if status == TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", times.get("return_value"))
        return result

    def check(self, **kwargs: Any) -> Iterable[Any]:
        """Django system checks: none beyond the base class's."""
        return list(super().check(**kwargs))


def _when(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None
