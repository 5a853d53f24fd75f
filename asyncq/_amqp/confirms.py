"""Publisher confirms of one channel: the delivery tag of each publish and who waits for it.

In confirm mode RabbitMQ numbers a channel's publishes 1, 2, 3... and answers with
``Basic.Ack`` / ``Basic.Nack`` frames, each for one tag or (``multiple``) for every tag up to
it. A mandatory message it cannot route comes back first as ``Basic.Return`` with the
message itself; it is matched to its tag by message id, as aiormq does.

A publish may carry a deadline: its future then fails with TimeoutError if no ack came by
then. The deadlines of a channel are kept in one heap under one timer (the connection's), so
a publish costs no timer of its own.
"""

from __future__ import annotations

import asyncio
import heapq

from asyncq._amqp.frames import ServerAck
from asyncq.exceptions import BrokerError

__all__ = ["Confirms", "PublishNacked", "PublishReturned"]


class PublishReturned(BrokerError):
    """RabbitMQ returned a mandatory message it could not route (no queue bound for it)."""


class PublishNacked(BrokerError):
    """RabbitMQ refused to take responsibility for a message (``Basic.Nack``)."""


class Confirms:
    """The futures of a channel's unconfirmed publishes, by delivery tag."""

    __slots__ = ("_deadlines", "_low", "_pending", "_returnable", "last_tag")

    def __init__(self) -> None:
        self.last_tag = 0  # the tag of the latest publish
        self._low = 1  # every tag below it is settled
        self._pending: dict[int, tuple[asyncio.Future[None], str | None]] = {}
        self._returnable: dict[str, int] = {}  # message id -> tag, for mandatory publishes
        self._deadlines: list[tuple[float, int, asyncio.Future[None]]] = []  # (deadline, tag, future)

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, future: asyncio.Future[None], returnable_id: str | None) -> None:
        """Register the next publish of the channel (in the order they are written)."""
        self.last_tag += 1
        self._pending[self.last_tag] = (future, returnable_id)
        if returnable_id is not None:
            self._returnable[returnable_id] = self.last_tag

    def watch(self, future: asyncio.Future[None], deadline: float) -> float:
        """Fail ``future`` (the latest publish's) at ``deadline`` unless settled first.

        Returns the earliest deadline still watched, for the caller's one timer.
        """
        heap = self._deadlines
        while heap and heap[0][2].done():  # settled ones at the top go now: the heap stays small
            heapq.heappop(heap)
        heapq.heappush(heap, (deadline, self.last_tag, future))
        return heap[0][0]

    def expire(self, now: float) -> float | None:
        """Fail the watched publishes whose deadline passed; the next deadline, or None."""
        heap = self._deadlines
        while heap:
            deadline, tag, future = heap[0]
            if not future.done() and deadline > now:
                return deadline
            heapq.heappop(heap)
            if not future.done():
                future.set_exception(TimeoutError(f"no confirm of tag {tag} by its deadline"))
        return None

    def settle(self, ack: ServerAck) -> None:
        pending = self._pending
        tag = ack.delivery_tag
        if ack.multiple:
            tags: range | tuple[int] = range(self._low, tag + 1)
            self._low = max(self._low, tag + 1)
        else:
            tags = (tag,)
            if tag == self._low:
                self._low += 1
        for settled in tags:
            entry = pending.pop(settled, None)
            if entry is None:
                continue
            future, returnable_id = entry
            if returnable_id is not None and self._returnable.get(returnable_id) == settled:
                del self._returnable[returnable_id]  # a re-send of the same message keeps its own
            if future.done():
                continue
            if ack.nack:
                future.set_exception(PublishNacked(f"RabbitMQ refused the message (nack of tag {settled})"))
            else:
                future.set_result(None)

    def returned(self, message_id: str | None, reply_code: int, reply_text: str) -> None:
        """Fail the publish RabbitMQ returned; its ack, which follows, then finds it done."""
        tag = self._returnable.pop(message_id, None) if message_id else None
        entry = self._pending.get(tag) if tag is not None else None
        if entry is not None and not entry[0].done():
            future = entry[0]
            future.set_exception(PublishReturned(f"RabbitMQ returned the message: {reply_code} {reply_text}"))

    def fail_all(self, error: BaseException) -> None:
        pending, self._pending = self._pending, {}
        self._returnable.clear()
        self._deadlines.clear()
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(error)
