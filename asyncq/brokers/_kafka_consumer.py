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
from asyncq.brokers._kafka_redelivery import Marks
from asyncq.brokers._offsets import OffsetTracker

__all__ = ["DELAY", "H_ETA", "ConsumerSession", "Lease", "header"]

logger = logging.getLogger(__name__)

DELAY = ".delay"
#: The longest a closing consumer waits for a rebalance to end to commit what it finished.
LAST_COMMIT_WAIT = 5.0
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
        self.marks = Marks(self.consumer)
        self.buffer: deque[tuple[Lease, Any]] = deque()
        self.out = 0  # yielded and not settled
        self.wakeup = asyncio.Event()
        # Bumped each time a partition is gained: a lease of an earlier hold is stale.
        self._generation: dict[TopicPartition, int] = {}
        self._owned: set[TopicPartition] = set()
        self._parked: set[TopicPartition] = set()  # revoked, their rebalance not over
        self._stable = asyncio.Event()  # set while no rebalance is in progress
        self._rebalances = 0  # rebalances begun: one during a mark's commit voids its batch
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
            await self._last_commit(min(timeout, LAST_COMMIT_WAIT))
        except (KafkaError, TimeoutError) as exc:
            logger.warning(
                "last offset commit failed (%s): finished messages may run again", describe_error(exc)
            )
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    await self.consumer.stop()

    async def _last_commit(self, timeout: float) -> None:
        """Commit, waiting out a rebalance in progress: its commits are refused until it ends."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await self.commit()
                    return
                except KafkaError as exc:
                    logger.debug("last offset commit waits for a rebalance: %s", describe_error(exc))
                if self._stable.is_set():  # refused before this member saw the rebalance begin
                    await asyncio.sleep(0.1)
                await self._stable.wait()

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
        """A rebalance begins: commit what is finished, and park the partitions until it ends.

        A parked partition keeps its offsets and running tasks: most come back to this member
        (:meth:`assigned`). Records fetched but not yet handed out are put back.
        """
        self._stable.clear()
        self._rebalances += 1
        logger.debug("rebalance: %d partitions revoked", len(partitions))
        try:
            await self.commit(partitions & self._owned)
        except KafkaError as exc:
            logger.warning(
                "commit on rebalance failed (%s): finished messages may run again", describe_error(exc)
            )
        kept: deque[tuple[Lease, Any]] = deque()
        for item in self.buffer:
            (partition, offset, _), _record = item
            if partition in partitions:
                self.tracker.rewind(partition, offset)  # the buffer is in order: the first one wins
            else:
                kept.append(item)
        self.buffer = kept
        self._parked |= partitions & self._owned
        self._owned -= partitions
        self.wakeup.set()

    def assigned(self, partitions: set[TopicPartition]) -> None:
        """A rebalance ended: parked partitions assigned again go on where they stopped.

        Their running tasks' leases stay valid and reading resumes past every offset already
        handed out (the group's committed offset, the lowest unfinished one, would hand those
        out twice). Partitions that went to another member are forgotten: settles of their
        records are ignored, and their generation moves on should they come back.
        """
        back, gone = self._parked & partitions, self._parked - partitions
        for partition in gone:
            for handle in self._held.pop(partition, set()):
                handle.cancel()
        self.tracker.drop(gone)
        self.marks.forget(set(partitions) - back)
        for partition in partitions - back:
            self._generation[partition] = self._generation.get(partition, 0) + 1
        for partition in back:
            position = self.tracker.position(partition)
            if position is not None:
                self.consumer.seek(partition, position)
        self._owned, self._parked = set(partitions), set()
        logger.debug("rebalance: %d partitions assigned, %d of them kept", len(partitions), len(back))
        self._stable.set()

    # -- fetching ----------------------------------------------------------------------------

    async def fill(self, prefetch: int) -> None:
        """Fetch up to the free prefetch slots (a long poll of a second), or wait for a settle."""
        self.wakeup.clear()
        free = prefetch - self.out - len(self.buffer)
        if free <= 0:
            await self.wakeup.wait()
            return
        batches = await self.consumer.getmany(timeout_ms=1000, max_records=free)
        rebalances = self._rebalances
        for partition, records in batches.items():
            if partition not in self._owned or self._rebalances != rebalances:
                # The fetch raced a rebalance (also one begun during a mark's commit below):
                # read these again once assigned() says whose they are (if still ours, that
                # may seek further on).
                if records and partition in self.consumer.assignment():
                    self.consumer.seek(partition, records[0].offset)
                continue
            generation = self._generation[partition]
            if not partition.topic.endswith(DELAY) and not await self._mark(partition, records):
                continue
            for record in records:
                self.tracker.take(partition, record.offset)
                lease = (partition, record.offset, generation)
                if partition.topic.endswith(DELAY):
                    self._hold(lease, record)
                else:
                    self.buffer.append((lease, record))

    async def _mark(self, partition: TopicPartition, records: list[Any]) -> bool:
        """Store the partition's mark before its records are handed out; else read them again."""
        rebalances = self._rebalances
        try:
            await self.marks.hand_out(partition, records[-1].offset + 1)
            # A rebalance meanwhile may have sought the partition back before these records.
            kept = self._rebalances == rebalances and partition in self._owned
        except KafkaError as exc:
            logger.warning("could not store the mark of %s (%s): read again", partition, describe_error(exc))
            kept = False
        if not kept and partition in self.consumer.assignment():
            self.consumer.seek(partition, records[0].offset)
        return kept

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
