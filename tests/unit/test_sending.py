"""The publish of a message whose record comes to this process, raced with that record."""

from __future__ import annotations

import asyncio

import pytest

from asyncq._sending import Arrival, publish_until_confirmed_or_arrived


async def test_a_record_that_arrives_first_ends_the_wait_and_abandons_the_confirm() -> None:
    loop = asyncio.get_running_loop()
    arrival: asyncio.Future[None] = loop.create_future()
    abandoned = asyncio.Event()

    async def publish() -> None:
        try:
            await asyncio.Event().wait()  # a confirm that is slow to come
        except asyncio.CancelledError:
            abandoned.set()
            raise

    loop.call_soon(arrival.set_result, None)
    await asyncio.wait_for(publish_until_confirmed_or_arrived(publish(), arrival), 5)
    await asyncio.wait_for(abandoned.wait(), 5)  # no retry can send it a second time


async def test_the_confirm_alone_ends_the_wait_and_the_arrival_is_released() -> None:
    arrival: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    confirmed = []

    async def publish() -> None:
        await asyncio.sleep(0)
        confirmed.append(True)

    await asyncio.wait_for(publish_until_confirmed_or_arrived(publish(), arrival), 5)
    assert confirmed == [True]
    assert arrival.cancelled()  # the backend forgets it


async def test_a_failed_publish_raises_to_the_caller() -> None:
    arrival: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def publish() -> None:
        raise ConnectionError("not confirmed")

    with pytest.raises(ConnectionError, match="not confirmed"):
        await publish_until_confirmed_or_arrived(publish(), arrival)


async def test_cancelling_the_caller_cancels_the_publish() -> None:
    arrival: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    started, abandoned = asyncio.Event(), asyncio.Event()

    async def publish() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            abandoned.set()
            raise

    caller = asyncio.ensure_future(publish_until_confirmed_or_arrived(publish(), arrival))
    await asyncio.wait_for(started.wait(), 5)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(abandoned.wait(), 5)


async def test_an_arrival_abandons_the_publish_in_the_iteration_the_record_came_in() -> None:
    loop = asyncio.get_running_loop()
    arrival = Arrival(loop=loop)
    abandoned = asyncio.Event()

    async def publish() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            abandoned.set()
            raise

    sender = asyncio.ensure_future(publish_until_confirmed_or_arrived(publish(), arrival))
    await asyncio.sleep(0)  # the publish is waiting for its confirm
    arrival.set_result(None)
    assert sender.cancelling() == 1  # cancelled inside set_result, not a loop iteration later
    await asyncio.wait_for(sender, 5)
    await asyncio.wait_for(abandoned.wait(), 5)


async def test_an_arrival_after_the_confirm_touches_nothing() -> None:
    arrival = Arrival(loop=asyncio.get_running_loop())

    async def publish() -> None:
        await asyncio.sleep(0)

    await asyncio.wait_for(publish_until_confirmed_or_arrived(publish(), arrival), 5)
    assert arrival.cancelled()
