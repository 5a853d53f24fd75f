"""Sending tasks only once the surrounding database transaction commits (``transaction.on_commit``).

Both asyncq tasks (``@app.task``) and Django tasks (``@task`` on :class:`AsyncqBackend`) are
accepted; either way the handle, with its id, is returned before the commit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from asyncq._utils import new_id
from asyncq.result import AsyncResult
from asyncq.sync import SyncResult, ensure_no_running_loop
from asyncq.task import Task

__all__ = ["DjangoTask", "apply_on_commit", "enqueue_on_commit"]

P = ParamSpec("P")
R = TypeVar("R")


class DjangoTask(Protocol):
    """What asyncq needs of a Django ``@task``; asyncq's own tasks have no ``queue_name``."""

    func: Callable[..., Any]
    queue_name: str
    run_after: datetime | None

    def get_backend(self) -> Any:
        """The task's backend."""


@overload
def enqueue_on_commit(task: Task[P, R], /, *args: P.args, **kwargs: P.kwargs) -> SyncResult[R]: ...
@overload
def enqueue_on_commit(task: DjangoTask, /, *args: Any, **kwargs: Any) -> Any: ...


def enqueue_on_commit(task: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Send ``task(*args, **kwargs)`` when the current transaction commits; never if it rolls back.

    Returns the handle at once, its id chosen now, so it can be stored or returned to a
    client before the commit: a blocking :class:`~asyncq.sync.SyncResult` for an asyncq task,
    a READY ``TaskResult`` for a Django ``@task`` (whose backend must be AsyncqBackend).
    Outside a transaction (autocommit) Django runs ``on_commit`` callbacks at once, so the
    task is sent at once.
    """
    if isinstance(task, Task):
        return apply_on_commit(task, args, kwargs)
    backend = task.get_backend() if hasattr(task, "get_backend") and hasattr(task, "queue_name") else None
    enqueue = getattr(backend, "enqueue_on_commit", None)
    if enqueue is None:
        raise TypeError(
            f"enqueue_on_commit() takes an asyncq task or a Django @task on AsyncqBackend, not {task!r}; "
            "for other backends use transaction.on_commit(functools.partial(task.enqueue, ...))"
        )
    return enqueue(task, args, kwargs)


def apply_on_commit(
    task: Task[Any, R],
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    using: str | None = None,
    robust: bool = False,
    **options: Any,
) -> SyncResult[R]:
    """:func:`enqueue_on_commit` with ``apply_async``'s options, on the database ``using``.

    Args:
        using: the database alias whose transaction gates the send (default: "default").
        robust: if True, a failed send at commit is logged instead of raised (Django's
            ``on_commit(robust=...)``); the data is committed either way.
        options: ``apply_async`` options (``countdown``, ``queue``, ``priority``...).
    """
    from django.db import transaction

    name = getattr(task, "__name__", "task")
    ensure_no_running_loop(f"enqueue_on_commit({name}, ...)", "`sync_to_async` around the transaction")
    task_id = str(options.pop("task_id", None) or new_id())
    # Build the message now, so bad arguments or options fail in the caller rather than at commit.
    task.build_message(args, kwargs, task_id=task_id, **options)
    call_args, call_kwargs = list(args or ()), dict(kwargs or {})

    def send() -> None:
        ensure_no_running_loop(f"sending {name} at commit", "a sync context for the commit")
        task.apply_async(call_args, call_kwargs, task_id=task_id, **options)

    transaction.on_commit(send, using=using, robust=robust)
    return SyncResult(AsyncResult(task_id, task.app, task_name=task.name))
