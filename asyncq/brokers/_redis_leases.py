"""The Redis broker's leases: the deliveries it holds, their renewal, and how they are settled.

``renew`` (the heartbeat, every visibility_timeout/3) extends the leases a live consumer
holds, fenced by delivery count so a stale holder cannot extend someone else's lease;
``ack`` (group commit), ``nack``, ``dead`` and ``release`` settle.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from asyncq._redis import ClientHolder, GroupCommit, script_call
from asyncq._utils import cancel_and_wait, describe_error
from asyncq.brokers._redis_scripts import ACK, CHUNK, DEAD, NACK, RELEASE, RENEW, Queue
from asyncq.exceptions import BrokerError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Leases", "RedisDelivery", "Settled", "joint_flushed"]

R = TypeVar("R")

logger = logging.getLogger("asyncq.brokers.redis")


def _closed() -> BrokerError:
    return BrokerError("the broker was closed before this call was applied")


class Leases:
    """The leases one broker instance holds, and the settings its consumers claim with."""

    def __init__(
        self,
        redis: ClientHolder,
        *,
        visibility: float,
        owner: str,
        poll_interval: float,
        batch_size: int,
        dead_letter_limit: int,
    ) -> None:
        self.redis = redis
        self.visibility = visibility
        self.visibility_ms = max(1, math.ceil(visibility * 1000))
        #: Lease owner id of the messages this instance takes; also in its connections' names,
        #: so that a live worker can tell (CLIENT LIST) that this process is gone.
        self.owner = owner
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.dead_letter_limit = dead_letter_limit
        self.held: dict[Queue, dict[bytes, RedisDelivery]] = {}
        self.acks: GroupCommit[tuple[Queue, bytes], None] = GroupCommit(
            self._flush_acks, "asyncq.redis.acks", _closed
        )
        self._heartbeat: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Apply pending acks and stop renewing (what is still held is redelivered later)."""
        await self.acks.close()
        await cancel_and_wait(self._heartbeat)
        self._heartbeat = None
        self.held.clear()

    async def _flush_acks(self, items: list[tuple[Queue, bytes]]) -> list[None]:
        first = items[0][0]
        handles = [handle for queue, handle in items if queue is first]
        by_queue: dict[Queue, list[bytes]] = {first: handles}
        if len(handles) < len(items):  # acks of several queues (most flushes have one)
            for queue, handle in items:
                if queue is not first:
                    by_queue.setdefault(queue, []).append(handle)
        calls = [
            script_call(ACK, queue.keys, handles[i : i + CHUNK])
            for queue, handles in by_queue.items()
            for i in range(0, len(handles), CHUNK)
        ]
        await self.redis.pipeline("ack", calls)  # idempotent, so retrying is safe
        return [None] * len(items)

    async def release(self, deliveries: list[RedisDelivery]) -> None:
        """Return taken-but-never-yielded deliveries to the head of their queues."""
        by_queue: dict[Queue, list[Any]] = {}
        for delivery in reversed(deliveries):  # LPUSHed one by one: newest first keeps the order
            by_queue.setdefault(delivery._queue, []).extend((delivery._handle, delivery.delivery_count))
        calls = [
            script_call(RELEASE, queue.keys, args[i : i + 2 * CHUNK])
            for queue, args in by_queue.items()
            for i in range(0, len(args), 2 * CHUNK)
        ]
        # One bounded attempt: if it fails the messages come back when their leases expire,
        # which is no reason to hold up closing the iterator.
        await self.redis.pipeline("return prefetched messages", calls, retry=False)

    # -- renewal ------------------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="asyncq.redis.heartbeat")

    async def _heartbeat_loop(self) -> None:
        interval = self.visibility / 3
        logger.debug("lease heartbeat started (every %.2fs)", interval)
        try:
            while True:
                await asyncio.sleep(interval)
                started = time.monotonic()
                try:
                    # Bounded: a renewal that cannot finish within its interval is already late.
                    async with asyncio.timeout(max(interval, 1.0)):
                        await self._renew()
                except (BrokerError, TimeoutError) as exc:
                    logger.warning(
                        "lease renewal failed (%s); retrying in %.2fs", describe_error(exc), interval
                    )
                else:
                    logger.debug("renewed leases in %.1f ms", (time.monotonic() - started) * 1000)
        finally:
            logger.debug("lease heartbeat stopped")

    async def _renew(self) -> None:
        calls: list[tuple[Any, ...]] = []
        queues: list[Queue] = []
        for queue, held in self.held.items():
            items = list(held.values())
            for i in range(0, len(items), CHUNK):
                args: list[Any] = [self.visibility_ms]
                for delivery in items[i : i + CHUNK]:
                    args += (delivery._handle, delivery.delivery_count)
                calls.append(script_call(RENEW, queue.keys, args))
                queues.append(queue)
        if not calls:
            return
        replies = await self.redis.pipeline("renew leases", calls, retry=False)
        for queue, lost in zip(queues, replies, strict=True):
            for handle in lost:
                lost_delivery = self.held.get(queue, {}).pop(handle, None)
                if lost_delivery is not None:
                    logger.warning(
                        "lease on %s/%s expired before it was renewed (was the event loop blocked longer "
                        "than visibility_timeout=%ss?); it may run twice",
                        queue.name,
                        lost_delivery.id,
                        self.visibility,
                    )


_OPEN, _SETTLING, _SETTLED = 0, 1, 2


class RedisDelivery:
    """A leased message; settling it releases its prefetch slot and stops its lease renewals."""

    __slots__ = (
        "_handle",
        "_leases",
        "_on_settled",
        "_queue",
        "_state",
        "body",
        "delivery_count",
        "id",
        "queue",
    )

    def __init__(
        self,
        leases: Leases,
        on_settled: Callable[[], None] | None,
        queue: Queue,
        handle: bytes,
        record: bytes,
        count: int,
    ) -> None:
        self._leases, self._on_settled, self._queue, self._handle = leases, on_settled, queue, handle
        # split_record(), inline (one call less per delivery): b"<len(id)>:<id><body>".
        colon = record.index(b":")
        end = colon + 1 + int(record[:colon])
        self.id, self.body = record[colon + 1 : end].decode(), record[end:]
        self.queue = queue.name
        self.delivery_count = count
        self._state = _OPEN

    def __repr__(self) -> str:
        return f"<RedisDelivery {self.queue}/{self.id} count={self.delivery_count}>"

    def _begin(self) -> None:
        if self._state != _OPEN:
            raise BrokerError(f"delivery {self.id} was already settled")
        self._state = _SETTLING
        self.detach()

    def detach(self) -> None:
        """Stop renewing the lease and free the consumer's prefetch slot (once)."""
        held = self._leases.held.get(self._queue)
        if held is not None:
            held.pop(self._handle, None)
        on_settled, self._on_settled = self._on_settled, None
        if on_settled is not None:
            on_settled()

    def forget(self) -> None:
        """Never yielded: settled by returning it to its queue (see :meth:`Leases.release`)."""
        self._state = _SETTLED
        self.detach()

    def _finish(self, ok: bool) -> None:
        # After a failure the delivery may be settled again; its lease is no longer renewed,
        # so if nobody settles it, it is redelivered after the visibility timeout.
        self._state = _SETTLED if ok else _OPEN

    async def ack(self) -> None:
        # _begin(), detach() and _finish(), inline: the path of every task.
        if self._state != _OPEN:
            raise BrokerError(f"delivery {self.id} was already settled")
        self._state = _SETTLING
        leases, queue, handle = self._leases, self._queue, self._handle
        held = leases.held.get(queue)
        if held is not None:
            held.pop(handle, None)
        on_settled, self._on_settled = self._on_settled, None
        if on_settled is not None:
            on_settled()
        try:
            await leases.acks.submit((queue, handle))
        except BaseException:
            self._state = _OPEN
            raise
        self._state = _SETTLED

    def ack_along(
        self,
        submit: Callable[[tuple[Any, ...]], R],
        key: bytes,
        value: bytes,
        ttl_ms: int,
        then: Settled | None = None,
    ) -> R:
        """``ack``, sent by another group commit: ``submit((key, value, ttl_ms, self, then))``.

        The result backend's way of writing a task's result and its ack in one round trip.
        A plain method (no coroutine of its own per task): the flush that carries the item
        settles the delivery, or opens it again if it failed (see :func:`joint_flushed`), and
        calls ``then`` with the error, if any.
        """
        if self._state != _OPEN:
            raise BrokerError(f"delivery {self.id} was already settled")
        self._state = _SETTLING
        held = self._leases.held.get(self._queue)  # detach(), inline as in ack()
        if held is not None:
            held.pop(self._handle, None)
        on_settled, self._on_settled = self._on_settled, None
        if on_settled is not None:
            on_settled()
        return submit((key, value, ttl_ms, self, then))

    async def nack(self, *, delay: float | None = None) -> None:
        self._begin()
        delay_ms = max(0, math.ceil((delay or 0) * 1000))
        ok = False
        try:
            done = await self._leases.redis.run(
                "nack", NACK, self._queue.keys, (self._handle, self.delivery_count, delay_ms)
            )
            if not done:
                logger.warning("nack of %s/%s ignored: its lease had expired", self.queue, self.id)
            ok = True
        finally:
            self._finish(ok)

    async def dead_letter(self, reason: str) -> None:
        self._begin()
        ok = False
        try:
            args = (self._handle, reason, self._leases.dead_letter_limit)
            await self._leases.redis.run("dead_letter", DEAD, self._queue.keys, args)
            ok = True
        finally:
            self._finish(ok)


#: Told how a pair sent by :meth:`RedisDelivery.ack_along` ended: its delivery, and the error
#: (None: stored and acked).
Settled = Callable[[RedisDelivery, BaseException | None], None]


def joint_flushed(items: Sequence[tuple[Any, ...]], error: BaseException | None) -> None:
    """The flush of :meth:`RedisDelivery.ack_along` items ended: settled, or open again.

    Each item's ``then`` hears how it ended.
    """
    state = _SETTLED if error is None else _OPEN
    for item in items:
        delivery = item[3]
        delivery._state = state
        then = item[4]
        if then is not None:
            then(delivery, error)
