"""Sending tasks only once the surrounding database transaction commits (``transaction.on_commit``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from asyncq._utils import new_id
from asyncq.result import AsyncResult
from asyncq.sync import SyncResult, ensure_no_running_loop
from asyncq.task import Task

__all__ = ["apply_on_commit", "enqueue_on_commit"]

P = ParamSpec("P")
R = TypeVar("R")


def enqueue_on_commit(task: Task[P, R], /, *args: P.args, **kwargs: P.kwargs) -> SyncResult[R]:
    """Send ``task(*args, **kwargs)`` when the current transaction commits; never if it rolls back.

    Returns the blocking handle at once: its id is chosen now, so it can be stored or
    returned to a client before the commit. Outside a transaction (autocommit) the task is
    sent immediately, as Django runs ``on_commit`` callbacks then.
    """
    return apply_on_commit(task, args, kwargs)


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
