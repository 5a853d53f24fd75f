"""Which ``kafka://`` records come back after their consumer died: the group's high marks.

A log keeps no delivery count per record, so a record that kills its worker would come back
with the count it had, never look like a suspect to the worker's poison rule
(asyncq/worker/suspects.py), and kill the next worker for ever. Before a consumer hands out
records of a partition, it stores one past the highest of them as the partition's *mark*;
the next owner counts a record below the mark as delivered once more than its header says.

The mark of partition ``p`` of ``topic`` is the group's committed offset of partition ``p``
of ``topic.marks``, a topic that is never written: an offset commit is the one thing every
Kafka-protocol server stores per group and partition (commit metadata strings would do, but
Tansu drops them). One commit per fetch batch, and only when the batch goes past the mark.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

__all__ = ["MARKS", "Marks"]

MARKS: Final = ".marks"


def _shadow(partition: TopicPartition) -> TopicPartition:
    return TopicPartition(partition.topic + MARKS, partition.partition)


class Marks:
    """The marks of one consumer's work partitions, read when first needed after an assignment."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        self._stored: dict[TopicPartition, int] = {}  # the mark as last read or committed
        self._found: dict[TopicPartition, int] = {}  # the mark when the partition was gained

    def redelivered(self, partition: TopicPartition, offset: int) -> bool:
        """Was ``offset`` handed out before, by an owner that never settled it?"""
        return offset < self._found.get(partition, 0)

    async def hand_out(self, partition: TopicPartition, end: int) -> None:
        """Store that the offsets of ``partition`` below ``end`` are handed out (KafkaError: not)."""
        if partition not in self._stored:
            await self._load(partition)
        if end <= self._stored[partition]:
            return
        # aiokafka's commit() takes only assigned partitions; the coordinator's takes any.
        coordinator = self._consumer._coordinator
        assignment = self._consumer._subscription.subscription.assignment
        await coordinator.commit_offsets(assignment, {_shadow(partition): OffsetAndMetadata(end, "")})
        self._stored[partition] = end

    async def _load(self, partition: TopicPartition) -> None:
        found = await self._consumer._coordinator.fetch_committed_offsets([_shadow(partition)])
        meta = found.get(_shadow(partition))
        mark = meta.offset if meta is not None and meta.offset > 0 else 0
        self._stored[partition] = self._found[partition] = mark

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions gained anew: another owner may have moved their marks meanwhile."""
        for partition in partitions:
            self._stored.pop(partition, None)
            self._found.pop(partition, None)
