"""Sends tasks to Celery workers in Celery's protocol and reads their results from Celery's backend.

``await app.send_task(name, args, kwargs, queue="celery", protocol="celery")`` lands here.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from asyncq._utils import now, to_epoch, to_seconds
from asyncq.celery.protocol import CeleryTask, encode_envelope, rebuild_exception
from asyncq.celery.redis_transport import CeleryRedis
from asyncq.exceptions import ConfigurationError
from asyncq.signature import signature_dicts

if TYPE_CHECKING:
    from asyncq.app import App
    from asyncq.celery.replies import CeleryReplies

__all__ = ["CeleryResult", "CelerySend", "send_celery_task"]

_OPTIONS = frozenset(
    {
        "queue",
        "countdown",
        "eta",
        "expires",
        "task_id",
        "headers",
        "priority",
        "ignore_result",
        "link",
        "link_error",
    }
)


class CeleryResult:
    """The result of a task sent to Celery, read from Celery's result backend.

    With a Redis backend each call opens and closes its own connection, so a handle can be
    kept and awaited from any event loop. With ``rpc://`` the states arrive on the sending
    app's reply queue (:mod:`asyncq.celery.replies`), so the handle is read in the loop that
    sent the task, as Celery's rpc:// results are only for the client that sent the task.
    """

    def __init__(
        self, task_id: str, results_url: str, *, timeout: float = 10.0, replies: CeleryReplies | None = None
    ) -> None:
        self.id = task_id
        self.results_url = results_url
        self._timeout = timeout
        self._replies = replies

    def __repr__(self) -> str:
        return f"<CeleryResult {self.id}>"

    async def state(self) -> str:
        """Celery's state name (PENDING until the worker stores one)."""
        meta = await self.meta()
        return "PENDING" if meta is None else str(meta.get("status"))

    async def get(self, timeout: float | None = None, *, propagate: bool = True) -> Any:
        """Wait for the result; on FAILURE raise the task's exception (rebuilt when importable).

        Raises:
            asyncq.exceptions.TimeoutError: not ready within ``timeout`` seconds.
        """
        if self._replies is not None:
            meta = await self._replies.wait(self.id, timeout=timeout)
        else:
            meta = await self._with(lambda r: r.wait_result(self.id, timeout=timeout))
        if meta.get("status") == "SUCCESS" or not propagate:
            return meta.get("result")
        raise rebuild_exception(meta.get("result"))

    async def meta(self) -> dict[str, Any] | None:
        """Celery's whole result record (status, result, traceback, date_done, ...), or None."""
        if self._replies is not None:
            return self._replies.latest(self.id)
        meta: dict[str, Any] | None = await self._with(lambda r: r.get_result(self.id))
        return meta

    async def _with(self, call: Any) -> Any:
        redis = CeleryRedis(self.results_url, timeout=self._timeout)
        try:
            return await call(redis)
        finally:
            await redis.aclose()


class CelerySend:
    """The awaitable ``app.send_task(..., protocol="celery")`` returns; awaiting it sends."""

    def __init__(self, app: App, task: CeleryTask, queue: str) -> None:
        self.app = app
        self.task = task
        self.queue = queue

    def __await__(self) -> Generator[Any, None, CeleryResult]:
        return self._send().__await__()

    async def _send(self) -> CeleryResult:
        from asyncq.celery.consumer import celery_urls, open_transports

        broker_url, results_url = celery_urls(self.app)
        timeout = float(self.app.conf.broker_connection_timeout or 10.0)
        replies = None
        if results_url.startswith("rpc://"):
            from asyncq.celery.replies import replies_for  # needs aio-pika: only for rpc://

            replies = replies_for(self.app, broker_url, timeout=timeout)
            self.task = replace(self.task, reply_to=await replies.queue())
        broker, results = open_transports(self.app)
        try:
            await broker.publish(
                self.queue, encode_envelope(self.task, queue=self.queue), priority=self.task.priority
            )
        finally:
            await broker.aclose()
            if results is not broker:
                await results.aclose()
        return CeleryResult(self.task.id, results_url, timeout=timeout, replies=replies)


def send_celery_task(
    app: App,
    name: str,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> CelerySend:
    """Build a Celery protocol-v2 message for ``name``; await the result to send it.

    Options: ``queue`` (default ``celery``), ``countdown``, ``eta``, ``expires`` (seconds
    from now or a datetime), ``task_id``, ``headers``, ``priority``, ``ignore_result``, and
    ``link`` / ``link_error``: a signature (``signature("name", args, queue=...)`` or a
    Celery signature dict) or a list of them, which the Celery worker sends when the task ends.
    """
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ConfigurationError(
            f"send_task(protocol='celery') got unknown options: {', '.join(sorted(unknown))}"
        )
    eta: datetime | None = options.get("eta")
    if eta is not None and not isinstance(eta, datetime):
        raise ConfigurationError(f"eta must be an aware datetime, got {type(eta).__name__}; or use countdown")
    countdown: float | timedelta | None = options.get("countdown")
    when = (
        to_epoch(eta) if eta is not None else (now() + (to_seconds(countdown) or 0.0) if countdown else None)
    )
    expires = options.get("expires")
    expires_at = to_epoch(expires)  # seconds from now, a timedelta or an aware datetime
    task_id = str(options.get("task_id") or uuid.uuid4())
    task = CeleryTask(
        id=task_id,
        task=name,
        args=list(args or []),
        kwargs=dict(kwargs or {}),
        eta=when,
        expires=expires_at,
        root_id=task_id,
        ignore_result=bool(options.get("ignore_result", False)),
        headers=dict(options.get("headers") or {}),
        priority=int(options.get("priority") or 0),
        embed={"callbacks": _links(options.get("link")), "errbacks": _links(options.get("link_error"))},
    )
    return CelerySend(app, task, str(options.get("queue") or "celery"))


def _links(given: Any) -> list[dict[str, Any]] | None:
    """``link`` / ``link_error`` as the list of Celery signature dicts its worker reads."""
    links = signature_dicts(given)
    for sig in links or []:
        if not isinstance(sig.get("task"), str) or sig.get("subtask_type"):
            raise ConfigurationError(
                f"send_task(protocol='celery'): a link must be a plain task signature, got {sig!r}"
            )
        sig.setdefault("chord_size", None)
    return links
