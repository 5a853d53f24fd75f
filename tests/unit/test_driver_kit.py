"""The broker driver kit (asyncq/brokers/_kit.py): consume() checks, prefetch gate, settle-once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from asyncq.backends.memory import MemoryBackend
from asyncq.brokers._kit import PrefetchGate, SettleOnce, check_consume
from asyncq.brokers.memory import MemoryBroker
from asyncq.exceptions import BrokerError, ConfigurationError


@pytest.mark.parametrize(
    ("queues", "prefetch", "expected"),
    [
        ([], 1, "consume\\(\\) needs at least one queue"),
        ("jobs", 1, "a list of queue names, not the string 'jobs'"),
        (["jobs"], 0, "prefetch=0: expected an integer >= 1"),
        (["jobs"], True, "prefetch=True"),
    ],
)
def test_bad_consume_arguments_are_configuration_errors(
    queues: object, prefetch: object, expected: str
) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        check_consume(queues, prefetch)  # type: ignore[arg-type]


def test_duplicate_queues_are_consumed_once_in_order() -> None:
    assert check_consume(["b", "a", "b"], 2) == ["b", "a"]


async def test_gate_waits_for_a_release_when_full() -> None:
    released: list[int] = []
    gate = PrefetchGate(2, lambda: released.append(gate.unsettled))
    gate.take(2)
    assert gate.free == 0
    waiter = asyncio.ensure_future(gate.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.release()
    await asyncio.wait_for(waiter, 5)
    assert gate.free == 1 and released == [1]


async def test_woken_gate_lets_waiters_through_for_good() -> None:
    gate = PrefetchGate(1)
    gate.take()
    waiter = asyncio.ensure_future(gate.wait())
    await asyncio.sleep(0)
    gate.wake()
    await asyncio.wait_for(waiter, 5)
    await asyncio.wait_for(gate.wait(), 5)  # stays open


def test_second_settle_raises_and_the_slot_is_freed_once() -> None:
    gate = PrefetchGate(1)
    gate.take()
    once = SettleOnce("m1", gate)
    once.settle()
    assert gate.unsettled == 0 and once.settled
    with pytest.raises(BrokerError, match="delivery m1 was already settled"):
        once.settle()
    assert gate.unsettled == 0


def test_an_undone_settle_may_be_tried_again() -> None:
    gate = PrefetchGate(1)
    gate.take()
    once = SettleOnce("m2", gate)
    once.begin()
    once.undo()  # the driver's write rolled back
    once.done()  # nothing to free: the delivery is still unsettled
    assert gate.unsettled == 1 and not once.settled
    once.begin()
    once.done()
    assert gate.unsettled == 0


@pytest.mark.parametrize("make", [MemoryBroker, MemoryBackend])
def test_memory_drivers_refuse_options_they_do_not_have(make: type[Any]) -> None:
    with pytest.raises(
        ConfigurationError, match=r"unknown memory (broker|backend) option 'visibility_timeout'"
    ):
        make("memory://", visibility_timeout=3)
