"""The running task's context: :class:`Request` (``self.request``) and :func:`current_task`.

Apart from :mod:`asyncq.task` so that the worker, the Celery consumer and the executors can
build and read it without the task machinery.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from asyncq.message import Message
from asyncq.states import State

if TYPE_CHECKING:
    from asyncq.task import Task

__all__ = ["Delivered", "Request", "current_task"]


@dataclass(slots=True)
class Request:
    """The context of one running task: ``self.request`` in a bound task.

    Attributes:
        id: the task id (stable across retries).
        delivery_info: ``queue``, ``delivery_count`` and ``priority`` of this delivery.
        is_eager: True when the task was called directly rather than run by a worker.
        hostname: the worker's ``host:pid`` (empty when eager).
    """

    id: str
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta: float | None = None
    expires: float | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    delivery_info: dict[str, Any] = field(default_factory=dict)
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    hostname: str = ""
    is_eager: bool = False
    message: Message | None = None
    # Set by the worker: stores progress from the worker's loop, whichever executor runs the task.
    state_writer: Callable[[State | str, dict[str, Any] | None], Awaitable[None]] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    # Set by the worker when the task is revoked with terminate=True (read by is_revoked()).
    # A plain attribute, not a threading.Event: one is built for every task, and a bool write
    # is seen by the task's thread at once.
    revoked: bool = field(default=False, repr=False, compare=False)

    @classmethod
    def delivered(
        cls,
        message: Delivered,
        *,
        task: str,
        delivery_info: dict[str, Any],
        hostname: str,
        state_writer: Callable[[State | str, dict[str, Any] | None], Awaitable[None]],
        loop: asyncio.AbstractEventLoop | None,
        native: Message | None = None,
    ) -> Request:
        """The request of a message a worker took: asyncq's own, or another protocol's (``native=None``)."""
        # Positional, in the field order (a test pins it): one is built per task.
        return cls(
            message.id,
            task,
            message.args,
            message.kwargs,
            message.retries,
            message.eta,
            message.expires,
            message.headers,
            delivery_info,
            message.root_id,
            message.parent_id,
            message.group_id,
            hostname,
            False,
            native,
            state_writer,
            loop,
        )


class Delivered(Protocol):
    """What a worker reads from any task message to build its :class:`Request`."""

    id: str
    args: list[Any]
    kwargs: dict[str, Any]
    retries: int
    eta: float | None
    expires: float | None
    headers: dict[str, Any]
    root_id: str | None
    parent_id: str | None
    group_id: str | None


_current: contextvars.ContextVar[tuple[Task[Any, Any], Request] | None] = contextvars.ContextVar(
    "asyncq_current_task", default=None
)


def current_task() -> Task[Any, Any] | None:
    """The task running in this context (the same object a bound task gets as ``self``)."""
    entry = _current.get()
    return None if entry is None else entry[0]
