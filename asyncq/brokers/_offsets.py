"""Which offset of each partition a log consumer may commit: the lowest one not yet finished.

Messages of one partition are handed out in order but finish in any order (a worker runs
many at once). Committing past an unfinished one would lose it on a crash, so the commit
point of a partition is its lowest unfinished offset, or one past the highest seen.
Generic: keys are any hashable partition id.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

__all__ = ["OffsetTracker"]

P = TypeVar("P", bound=Hashable)


class OffsetTracker(Generic[P]):
    """Offsets taken and finished per partition; :meth:`commits` says what may be committed."""

    def __init__(self) -> None:
        self._open: dict[P, set[int]] = {}
        self._next: dict[P, int] = {}  # one past the highest offset taken
        self._committed: dict[P, int] = {}

    def take(self, partition: P, offset: int) -> None:
        self._open.setdefault(partition, set()).add(offset)
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def finish(self, partition: P, offset: int) -> None:
        """``offset`` is done; a partition no longer held (revoked) is ignored."""
        pending = self._open.get(partition)
        if pending is not None:
            pending.discard(offset)

    def position(self, partition: P) -> int | None:
        """Where reading ``partition`` goes on: one past the highest offset taken (None: unknown)."""
        return self._next.get(partition)

    def rewind(self, partition: P, offset: int) -> None:
        """Offsets from ``offset`` on were taken but never handed out: they will be taken again."""
        if partition not in self._next:
            return
        pending = self._open.get(partition, set())
        self._open[partition] = {o for o in pending if o < offset}
        self._next[partition] = min(self._next[partition], offset)

    def point(self, partition: P) -> int | None:
        if partition not in self._next:
            return None
        pending = self._open.get(partition)
        return min(pending) if pending else self._next[partition]

    def commits(self, partitions: Iterable[P] | None = None) -> dict[P, int]:
        """The commit point of each partition (default: all) that moved since the last call."""
        moved = {}
        for partition in list(self._next if partitions is None else partitions):
            point = self.point(partition)
            if point is not None and point != self._committed.get(partition):
                moved[partition] = point
        return moved

    def committed(self, points: dict[P, int]) -> None:
        self._committed.update(points)

    def drop(self, partitions: Iterable[P]) -> None:
        """Forget partitions handed to another consumer (a rebalance)."""
        for partition in partitions:
            self._open.pop(partition, None)
            self._next.pop(partition, None)
            self._committed.pop(partition, None)
