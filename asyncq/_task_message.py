"""How a task call becomes a message: the task's send defaults resolved once, the message built.

``Task.build_message``, ``apply_async`` and ``enqueue`` use it; the settings a task's messages
depend on are read again only when they change (``Conf`` counts its assignments).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from asyncq._utils import new_id, now, to_epoch, to_seconds
from asyncq.message import Message
from asyncq.request import _current
from asyncq.signature import signature_dicts

if TYPE_CHECKING:
    from asyncq.task import Links, Task

__all__ = ["SendPlan", "build", "send_plan"]


@dataclass(slots=True)
class SendPlan:
    """What every message of a task takes from its options and the app's settings, resolved once.

    Valid while the app keeps its settings object, unchanged (``version``), its serializers, and
    the task keeps the option values it was made from (``TaskOptions`` stays mutable, as before).
    """

    conf: object
    options: tuple[object, ...]
    version: int
    serializers: object
    eager: bool
    routes: Any  # task_routes: while it is empty, every message goes to ``queue``
    queue: str
    priority: int | None
    ignore_result: bool
    content_type: str | None  # None: the default serializer is not accepted, ask per call


def send_plan(task: Task[Any, Any]) -> SendPlan:
    """The task's plan, resolved again when the app's settings or serializers changed."""
    app = task.app
    conf = app.conf
    plan = task._send_plan
    options = task.options
    used = (options.queue, options.priority, options.serializer, options.ignore_result)
    if (
        plan is not None
        and plan.version == conf._version
        and plan.conf is conf
        and plan.serializers is app._serializers
        and plan.options == used
    ):
        return plan
    serializers = app.serializers
    try:
        content_type: str | None = serializers.get(options.serializer or conf.task_serializer).content_type
    except Exception:  # raised again by the calls that use it; a call may name another
        content_type = None
    priority = conf.task_default_priority if options.priority is None else options.priority
    plan = SendPlan(
        conf=conf,
        options=used,
        version=conf._version,
        serializers=serializers,
        eager=bool(conf.task_always_eager),
        routes=conf.task_routes,
        queue=app.route(task.name, options.queue),
        priority=priority,
        ignore_result=task.ignores_result,
        content_type=content_type,
    )
    task._send_plan = plan
    return plan


def build(
    task: Task[Any, Any],
    plan: SendPlan,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    countdown: float | timedelta | None,
    eta: datetime | None,
    expires: float | timedelta | datetime | None,
    priority: int | None,
    queue: str | None,
    task_id: str | None,
    headers: Mapping[str, Any] | None,
    serializer: str | None,
    ignore_result: bool | None,
    link: Links | None,
    link_error: Links | None,
) -> Message:
    """The message of one call of ``task`` (``Task.build_message``'s arguments, in order)."""
    if countdown is not None and eta is not None:
        raise ValueError("give countdown or eta, not both")
    if (
        args is not None
        and type(args) not in (tuple, list)
        and (  # the common cases, cheaply
            isinstance(args, str | bytes) or not isinstance(args, Sequence)
        )
    ):
        raise TypeError(f"args must be a list or tuple, not {type(args).__name__}")
    options = task.options
    priority = plan.priority if priority is None else priority
    if priority is not None and not 0 <= int(priority) <= 9:
        raise ValueError(f"priority must be 0-9, not {priority}")
    if expires is None:
        expires = options.expires
    if eta is not None or countdown is not None or expires is not None:
        sent_at = now()
        at = (
            to_epoch(eta if eta is not None else to_seconds(countdown), relative_to=sent_at)
            if (eta is not None or countdown is not None)
            else None
        )
        until = to_epoch(expires, relative_to=sent_at)
    else:
        at = until = None
    current = _current.get()
    parent = current[1] if current is not None and not current[1].is_eager else None
    message_id = task_id or new_id()
    sent_headers = dict(headers) if headers else {}
    if task.fair is not None:
        sent_headers.update(task.fair.headers(tuple(args or ()), kwargs or {}))
    if not queue:
        queue = task.app.route(task.name, options.queue) if plan.routes else plan.queue
    content_type = plan.content_type
    if serializer is not None or content_type is None:
        content_type = task.app.serializers.get(
            serializer or options.serializer or task.app.conf.task_serializer
        ).content_type
    # Positional, in the field order of Message: the keyword form costs more per call.
    return Message(
        message_id,
        task.name,
        list(args) if args else [],
        dict(kwargs) if kwargs else {},
        queue,
        0,
        at,
        until,
        priority,
        sent_headers,
        (parent.root_id or parent.id) if parent else message_id,
        parent.id if parent else None,
        None,
        None if link is None else signature_dicts(link),
        None if link_error is None else signature_dicts(link_error),
        None,
        None,
        plan.ignore_result if ignore_result is None else bool(ignore_result),
        content_type,
    )
