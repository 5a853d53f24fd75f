"""Several sets of worker hooks as one: events, metrics and tracing each see every call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from asyncq.events.emitter import NoEvents

if TYPE_CHECKING:
    from asyncq.message import Message

__all__ = ["FanOut", "combine"]


class FanOut(NoEvents):
    """Calls each of ``hooks`` in order; used only when more than one set is live."""

    def __init__(self, hooks: Sequence[NoEvents]) -> None:
        self.hooks = tuple(hooks)
        self.enabled = any(h.enabled for h in self.hooks)

    def task_sent(self, message: Message) -> None:
        for h in self.hooks:
            h.task_sent(message)

    def task_received(self, message: Message) -> None:
        for h in self.hooks:
            h.task_received(message)

    def task_started(self, message: Message) -> None:
        for h in self.hooks:
            h.task_started(message)

    def task_succeeded(self, message: Message, runtime: float) -> None:
        for h in self.hooks:
            h.task_succeeded(message, runtime)

    def task_failed(self, message: Message, exc: BaseException, runtime: float) -> None:
        for h in self.hooks:
            h.task_failed(message, exc, runtime)

    def task_retried(self, message: Message, exc: BaseException | None, eta: float | None) -> None:
        for h in self.hooks:
            h.task_retried(message, exc, eta)

    def task_revoked(self, message: Message, reason: str) -> None:
        for h in self.hooks:
            h.task_revoked(message, reason)

    def task_rejected(self, message: Message, reason: str, requeue: bool) -> None:
        for h in self.hooks:
            h.task_rejected(message, reason, requeue)

    def task_dead_lettered(
        self, message: Message | None, reason: str, *, task_id: str = "", queue: str = ""
    ) -> None:
        for h in self.hooks:
            h.task_dead_lettered(message, reason, task_id=task_id, queue=queue)

    def task_waiting(self, message: Message, limit: str, key: str | None, wait: float | None) -> None:
        for h in self.hooks:
            h.task_waiting(message, limit, key, wait)

    def worker_event(self, code: int, **fields: Any) -> None:
        for h in self.hooks:
            h.worker_event(code, **fields)

    async def start(self) -> None:
        for h in self.hooks:
            await h.start()

    async def aclose(self) -> None:
        for h in self.hooks:
            await h.aclose()


def combine(hooks: Sequence[NoEvents]) -> NoEvents:
    """One set of hooks calling all of ``hooks``: the only one itself if there is one, no fan-out."""
    live = [h for h in hooks if type(h) is not NoEvents]
    if not live:
        return hooks[0] if hooks else NoEvents()
    return live[0] if len(live) == 1 else FanOut(live)
