"""Chores every broker driver shares: consume() argument checks, prefetch slots, settle-once.

A driver's ``consume()`` starts with :func:`check_consume` (one error style for bad
arguments), keeps a :class:`PrefetchGate` per iterator (at most ``prefetch`` deliveries
yielded and not settled), and gives each delivery a :class:`SettleOnce` that refuses a
second ack/nack/dead_letter and frees the delivery's slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from asyncq.exceptions import BrokerError, ConfigurationError

__all__ = ["PrefetchGate", "SettleOnce", "check_consume"]


def check_consume(queues: Sequence[str], prefetch: int) -> list[str]:
    """The queues to consume, duplicates dropped in order; ConfigurationError for bad arguments."""
    if isinstance(queues, str):
        raise ConfigurationError(f"consume() takes a list of queue names, not the string {queues!r}")
    if not queues:
        raise ConfigurationError("consume() needs at least one queue")
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
        raise ConfigurationError(f"consume() prefetch={prefetch!r}: expected an integer >= 1")
    return list(dict.fromkeys(queues))


class PrefetchGate:
    """Counts the unsettled deliveries of one ``consume()`` iterator against its prefetch.

    ``unsettled`` counts what the iterator took (claimed, buffered or yielded) and was not
    settled yet; :meth:`wait` returns once a slot is free (or the gate was opened for good by
    :meth:`wake`, when the broker closes).
    """

    __slots__ = ("_event", "_on_release", "_woken", "prefetch", "unsettled")

    def __init__(self, prefetch: int, on_release: Callable[[], None] | None = None) -> None:
        self.prefetch = prefetch
        self.unsettled = 0
        self._on_release = on_release  # e.g. wake a claim loop, or close a drained channel
        self._event = asyncio.Event()  # set on every release (and on wake)
        self._woken = False

    @property
    def free(self) -> int:
        """How many more deliveries the iterator may take now."""
        return max(0, self.prefetch - self.unsettled)

    def take(self, count: int = 1) -> None:
        """``count`` deliveries were taken from the broker."""
        self.unsettled += count

    def release(self) -> None:
        """One delivery was settled (or handed back): its slot is free."""
        self.unsettled -= 1
        self._event.set()
        if self._on_release is not None:
            self._on_release()

    async def wait(self) -> None:
        """Return once a slot is free, or the gate was woken."""
        while self.unsettled >= self.prefetch and not self._woken:
            self._event.clear()
            await self._event.wait()

    def wake(self) -> None:
        """Release every waiter for good (the broker is closing; they see that and raise)."""
        self._woken = True
        self._event.set()


class SettleOnce:
    """A delivery's settle guard: the first ack/nack/dead_letter wins, a second one raises.

    ``begin()`` claims the settlement; a driver whose settle can fail and be retried (a
    rolled-back transaction) calls ``undo()`` then, and ``done()`` once the slot is to be
    freed. ``settle()`` is ``begin()`` and ``done()`` together, for drivers whose settle
    frees the slot whatever happens next.
    """

    __slots__ = ("_gate", "_id", "_state")

    def __init__(self, delivery_id: str, gate: PrefetchGate | None) -> None:
        self._id = delivery_id
        self._gate = gate
        self._state = 0  # 0: open, 1: settling, 2: slot freed

    @property
    def settled(self) -> bool:
        """Whether a settlement was claimed (and not undone)."""
        return self._state != 0

    def begin(self) -> None:
        """Claim the settlement, or raise BrokerError if the delivery was settled already."""
        if self._state:
            raise BrokerError(f"delivery {self._id} was already settled")
        self._state = 1

    def undo(self) -> None:
        """The settlement failed and changed nothing: the caller may settle again."""
        if self._state == 1:
            self._state = 0

    def done(self) -> None:
        """Free the delivery's prefetch slot (once)."""
        if self._state == 1:
            self._state = 2
            if self._gate is not None:
                self._gate.release()

    def settle(self) -> None:
        """``begin()`` and ``done()``: claim the settlement and free the slot at once."""
        if self._state:
            raise BrokerError(f"delivery {self._id} was already settled")
        self._state = 2  # begin() and done() in one step: every delivery's ack comes here
        if self._gate is not None:
            self._gate.release()
