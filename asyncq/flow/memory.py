"""The memory:// limit store: the state in this process, shared by every worker of one broker."""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from asyncq.flow.gcra import reserve

__all__ = ["MemoryLimitStore"]


class _State:
    def __init__(self) -> None:
        self.tats: dict[str, float] = {}
        self.slots: dict[str, dict[str, float]] = {}  # key -> holder -> lease expiry


_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()


class MemoryLimitStore:
    """In-process store: every store made for the same driver instance sees the same state."""

    def __init__(self, driver: Any) -> None:
        state = _STATES.get(driver)
        if state is None:
            state = _STATES[driver] = _State()
        self._state = state

    async def connect(self) -> None:
        """Nothing to open."""

    async def aclose(self) -> None:
        """Nothing to release."""

    async def reserve(self, key: str, interval: float, count: int, burst: int) -> list[float]:
        tats = self._state.tats
        tats[key], waits = reserve(tats.get(key, 0.0), time.monotonic(), interval, count, burst)
        return waits

    def _live(self, key: str) -> dict[str, float]:
        current = time.monotonic()
        held = self._state.slots.setdefault(key, {})
        for holder in [h for h, until in held.items() if until <= current]:
            del held[holder]
        return held

    async def acquire(self, key: str, limit: int, holders: Sequence[str], lease: float) -> list[str]:
        held = self._live(key)
        until = time.monotonic() + lease
        given = []
        for holder in holders:
            if holder in held or len(held) < limit:
                held[holder] = until
                given.append(holder)
        return given

    async def release(self, key: str, holders: Sequence[str]) -> None:
        held = self._state.slots.get(key, {})
        for holder in holders:
            held.pop(holder, None)
        if not held:
            self._state.slots.pop(key, None)

    async def renew(self, held: Mapping[str, Sequence[str]], lease: float) -> None:
        until = time.monotonic() + lease
        for key, holders in held.items():
            slots = self._state.slots.get(key, {})
            for holder in holders:
                if holder in slots:  # an expired slot may be someone else's now: not taken back
                    slots[holder] = until

    async def count(self, key: str) -> int:
        return len(self._live(key))
