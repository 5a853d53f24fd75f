"""In-process broker for tests and embedding: nothing leaves this process, nothing persists."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from asyncq._options import parse_options
from asyncq._utils import now
from asyncq.brokers._kit import PrefetchGate, check_consume
from asyncq.brokers.base import BrokerCapabilities, BrokerDefaults, DeadLetter, Delivery, OutgoingMessage
from asyncq.exceptions import BrokerError

__all__ = ["MemoryBroker"]


@dataclass(slots=True)
class _Item:
    sort_key: tuple[int, int]  # (-priority, seq): highest priority, then publish order
    message: OutgoingMessage
    deliveries: int = 0


# Heaps hold (-priority, seq, item): flat, so a comparison is of two ints (seq is unique and
# the item is never compared); a nested (sort_key, item) made each one a tuple comparison.
_Entry = tuple[int, int, _Item]


class _MemoryDelivery:
    # SettleOnce.settle() inline (one object and one call less per delivery): nothing here
    # can fail after the settlement is claimed.
    __slots__ = ("_broker", "_gate", "_item", "_settled", "body", "delivery_count", "id", "queue")

    def __init__(self, broker: MemoryBroker, item: _Item, gate: PrefetchGate | None) -> None:
        self._broker, self._item, self._gate, self._settled = broker, item, gate, False
        message = item.message
        self.id, self.queue, self.body = message.id, message.queue, message.body
        self.delivery_count = item.deliveries

    def _settle(self) -> None:
        if self._settled:
            raise BrokerError(f"delivery {self.id} was already settled")
        self._settled = True
        if self._gate is not None:
            self._gate.release()

    async def ack(self) -> None:
        self._settle()

    async def nack(self, *, delay: float | None = None) -> None:
        self._settle()
        self._broker._put(self._item, None if not delay else now() + delay)

    async def dead_letter(self, reason: str) -> None:
        self._settle()
        msg = self._item.message
        letter = DeadLetter(msg.id, msg.queue, msg.body, reason, now())
        self._broker._dead[msg.queue].append((letter, msg.priority))


class MemoryBroker(BrokerDefaults):
    """``memory://``: queues in this process's memory.

    Producers and workers must share the same App (and so the same broker instance). Good
    for tests and for embedding a worker next to the code that enqueues.
    """

    capabilities = BrokerCapabilities(durable=False, redelivers_lost=False, notifies=True)

    def __init__(self, url: str = "memory://", **options: Any) -> None:
        self.url = url
        parse_options(urlsplit(url).query, options, (), what="memory broker")  # it has none
        self._seq = itertools.count()
        self._ready: dict[str, list[_Entry]] = {}
        self._delayed: list[tuple[float, int, _Item]] = []
        # Each dead letter with its priority, which a requeue gives back.
        self._dead: dict[str, list[tuple[DeadLetter, int | None]]] = {}
        # One event for all consumers: set on every put. Taking and clearing happen with no
        # await in between, so a put can never slip between them and be missed.
        self._wakeup = asyncio.Event()

    async def connect(self) -> None:
        """Nothing to open."""

    async def aclose(self) -> None:
        """Nothing to release; queued messages stay for a later connect."""

    def _queue(self, name: str) -> list[_Entry]:
        self._dead.setdefault(name, [])
        return self._ready.setdefault(name, [])

    def _put(self, item: _Item, eta: float | None) -> None:
        if eta is not None and eta > now():
            self._queue(item.message.queue)  # the queue exists while its first message waits
            heapq.heappush(self._delayed, (eta, next(self._seq), item))
        else:
            self._push_ready(item)
        self._wakeup.set()

    def _push_ready(self, item: _Item) -> None:
        """Queue ``item`` for consumers now (its eta is due or there is none)."""
        heapq.heappush(self._queue(item.message.queue), (*item.sort_key, item))

    async def publish(self, message: OutgoingMessage) -> None:
        self._put(_Item((-(message.priority or 0), next(self._seq)), message), message.eta)

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        for message in messages:
            await self.publish(message)

    def _promote_due(self) -> float | None:
        """Move due delayed items to their queues; return the next eta still pending."""
        current = now()
        while self._delayed and self._delayed[0][0] <= current:
            _, _, item = heapq.heappop(self._delayed)
            self._push_ready(item)
        return self._delayed[0][0] if self._delayed else None

    def _take(self, queues: Sequence[str]) -> _Item | None:
        best: list[_Entry] | None = None
        for name in queues:
            queue = self._ready.get(name)
            if queue and (best is None or queue[0] < best[0]):
                best = queue
        return heapq.heappop(best)[2] if best else None

    async def consume(self, queues: Sequence[str], *, prefetch: int) -> AsyncGenerator[Delivery, None]:
        queues = check_consume(queues, prefetch)
        for name in queues:
            self._queue(name)
        gate = PrefetchGate(prefetch)
        while True:
            if gate.unsettled >= prefetch:  # full: wait for a settle (no coroutine when not)
                await gate.wait()
            while True:
                next_eta = self._promote_due() if self._delayed else None
                item = self._take(queues)
                if item is not None:
                    break
                self._wakeup.clear()
                timeout = None if next_eta is None else max(0.0, next_eta - now())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
            item.deliveries += 1
            gate.unsettled += 1  # gate.take(), inline
            yield _MemoryDelivery(self, item, gate)

    async def purge(self, queue: str) -> int:
        count = len(self._ready.get(queue, ()))
        self._ready[queue] = []
        kept = [entry for entry in self._delayed if entry[2].message.queue != queue]
        count += len(self._delayed) - len(kept)
        heapq.heapify(kept)
        self._delayed = kept
        return count

    async def queue_length(self, queue: str) -> int:
        delayed = sum(1 for entry in self._delayed if entry[2].message.queue == queue)
        return len(self._ready.get(queue, ())) + delayed

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        return [letter for letter, _ in self._dead.get(queue, ())[:limit]]

    async def get_dead_letter(self, queue: str, message_id: str) -> DeadLetter | None:
        return next((letter for letter, _ in self._dead.get(queue, ()) if letter.id == message_id), None)

    async def requeue_dead_letter(self, queue: str, message_id: str) -> bool:
        letters = self._dead.get(queue, [])
        for index, (letter, priority) in enumerate(letters):
            if letter.id == message_id:
                del letters[index]
                self._requeue(letter, priority)
                return True
        return False

    async def requeue_dead_letters(self, queue: str) -> int:
        letters, self._dead[queue] = self._dead.get(queue, []), []
        for letter, priority in letters:
            self._requeue(letter, priority)
        return len(letters)

    def _requeue(self, letter: DeadLetter, priority: int | None) -> None:
        message = OutgoingMessage(letter.id, letter.queue, letter.body, priority)
        self._put(_Item((-(priority or 0), next(self._seq)), message), None)  # a new item: 0 deliveries

    async def purge_dead_letters(self, queue: str) -> int:
        letters, self._dead[queue] = self._dead.get(queue, []), []
        return len(letters)
