"""One ``kafka://`` consume() call: a group member, its offsets, and its delay-topic mover.

Records are handed out in partition order and finish in any order; offsets are committed
only up to the lowest unfinished record of each partition (asyncq/brokers/_offsets.py), so a
crash loses nothing. Records of a ``.delay`` topic are held until their eta, then produced
to their work topic and finished: the offset of a held record is not committed either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from asyncq._utils import cancel_and_wait, describe_error
from asyncq.brokers._offsets import OffsetTracker

__all__ = ["DELAY", "H_ETA", "ConsumerSession", "Lease", "header"]

logger = logging.getLogger(__name__)

DELAY = ".delay"
H_ETA = "asyncq-eta"

#: (partition, offset, generation): a settle after the partition moved away is ignored.
Lease = tuple[TopicPartition, int, int]
#: Produces a held delay record to its work topic.
Mover = Callable[[str, Any], Awaitable[None]]


def header(record: Any, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return bytes(value).decode()
    return None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, session: ConsumerSession) -> None:
        self._session = session

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._session.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._session.assigned(set(assigned))


class ConsumerSession:
    """A consumer-group member reading work topics and their delay topics."""

    def __init__(self, topics: list[str], mover: Mover, *, commit_interval: float, **config: Any) -> None:
        self.consumer = AIOKafkaConsumer(enable_auto_commit=False, auto_offset_reset="earliest", **config)
        self._topics, self._mover, self._interval = topics, mover, commit_interval
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self.buffer: deque[tuple[Lease, Any]] = deque()
        self.out = 0  # yielded and not settled
        self.wakeup = asyncio.Event()
        self._generation: dict[TopicPartition, int] = {}
        self._held: dict[TopicPartition, set[asyncio.TimerHandle | asyncio.Task[None]]] = {}
        self._committer: asyncio.Task[None] | None = None

    async def start(self, timeout: float) -> None:
        self.consumer.subscribe(self._topics, listener=_Rebalance(self))
        try:
            async with asyncio.timeout(timeout):
                await self.consumer.start()
        except BaseException:
            # An abandoned start leaves aiokafka's coordinator running: it would finish the
            # join and hold its share of the partitions, heartbeating, with nobody reading them.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout + 5.0):
                    await self.consumer.stop()
            raise
        self._committer = asyncio.create_task(self._commit_loop(), name="asyncq.kafka.commit")

    async def close(self, timeout: float) -> None:
        await cancel_and_wait(self._committer)
        for handles in self._held.values():
            for handle in handles:
                handle.cancel()  # their records stay uncommitted: read again by the next owner
        try:
            async with asyncio.timeout(timeout):
                await self.commit()
        except (KafkaError, TimeoutError) as exc:
            logger.warning(
                "last offset commit failed (%s): finished messages may run again", describe_error(exc)
            )
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    await self.consumer.stop()

    # -- offsets -----------------------------------------------------------------------------

    def finish(self, lease: Lease) -> None:
        partition, offset, generation = lease
        if self._generation.get(partition) == generation:
            self.tracker.finish(partition, offset)

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        points = self.tracker.commits(partitions)
        if points:
            await self.consumer.commit(points)
            self.tracker.committed(points)

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.commit()
            except KafkaError as exc:  # a rebalance in progress: the next tick commits
                logger.debug("offset commit deferred: %s", describe_error(exc))

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        try:
            await self.commit(partitions & set(self._generation))
        except KafkaError as exc:
            logger.warning(
                "commit on rebalance failed (%s): finished messages may run again", describe_error(exc)
            )
        for partition in partitions:
            for handle in self._held.pop(partition, set()):
                handle.cancel()
            self._generation.pop(partition, None)
        self.tracker.drop(partitions)
        self.buffer = deque(item for item in self.buffer if item[0][0] not in partitions)

    def assigned(self, partitions: set[TopicPartition]) -> None:
        for partition in partitions:
            self._generation[partition] = self._generation.get(partition, 0) + 1

    # -- fetching ----------------------------------------------------------------------------

    async def fill(self, prefetch: int) -> None:
        """Fetch up to the free prefetch slots (a long poll of a second), or wait for a settle."""
        self.wakeup.clear()
        free = prefetch - self.out - len(self.buffer)
        if free <= 0:
            await self.wakeup.wait()
            return
        batches = await self.consumer.getmany(timeout_ms=1000, max_records=free)
        for partition, records in batches.items():
            generation = self._generation.setdefault(partition, 1)
            for record in records:
                self.tracker.take(partition, record.offset)
                lease = (partition, record.offset, generation)
                if partition.topic.endswith(DELAY):
                    self._hold(lease, record)
                else:
                    self.buffer.append((lease, record))

    def settled(self) -> None:
        self.out -= 1
        self.wakeup.set()

    def _hold(self, lease: Lease, record: Any) -> None:
        """Keep a delay record until its eta, then move it to its work topic."""
        eta = float(header(record, H_ETA) or 0)
        handles = self._held.setdefault(lease[0], set())
        loop = asyncio.get_running_loop()

        def start() -> None:
            task = asyncio.create_task(self._move(lease, record), name="asyncq.kafka.move")
            handles.add(task)
            task.add_done_callback(handles.discard)

        timer = loop.call_later(max(0.0, eta - time.time()), start)
        handles.add(timer)
        loop.call_later(max(0.0, eta - time.time()) + 0.001, handles.discard, timer)

    async def _move(self, lease: Lease, record: Any) -> None:
        target = lease[0].topic[: -len(DELAY)]
        while True:
            try:
                await self._mover(target, record)
                self.finish(lease)
                return
            except Exception as exc:  # the record stays uncommitted; try again shortly
                logger.warning("could not move a delayed message to %s: %s", target, describe_error(exc))
                await asyncio.sleep(1.0)
