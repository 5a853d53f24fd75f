"""The broker contract: every registered broker driver must pass every test here.

Skips come only from a driver's declared capabilities.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from asyncq.brokers import BROKERS, Broker, Delivery, OutgoingMessage
from asyncq.exceptions import ConfigurationError
from tests.conformance.conftest import BROKER_PARAMS

TIMEOUT = 10.0


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:12]}"


def msg(queue: str, body: bytes = b"x", **kw: Any) -> OutgoingMessage:
    return OutgoingMessage(id=str(uuid.uuid4()), queue=queue, body=body, **kw)


async def take(it: AsyncIterator[Delivery], timeout: float = TIMEOUT) -> Delivery:
    return await asyncio.wait_for(anext(it), timeout)


async def expect_nothing(it: AsyncIterator[Delivery], seconds: float) -> asyncio.Task[Delivery]:
    """Assert the iterator yields nothing for ``seconds`` (a bounded wait for an absence).

    Returns the still-pending ``anext`` task: the caller awaits it for the next delivery or
    cancels it (which ends the iterator) before closing.
    """
    pending = asyncio.ensure_future(anext(it))
    done, _ = await asyncio.wait({pending}, timeout=seconds)
    assert not done, f"unexpected delivery: {pending.result().body!r}"
    return pending


async def cancel(task: asyncio.Task[Delivery]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_every_registered_driver_has_a_contract_param() -> None:
    # Aliases (rediss, amqps) share a driver module; each driver module needs a param.
    drivers = {target.split(":")[0].rsplit(".", 1)[1] for target in BROKERS.values()}
    params = {p.values[0] for p in BROKER_PARAMS.values()}
    assert drivers <= params, f"drivers without a conformance param: {drivers - params}"


@pytest.mark.parametrize(("queues", "prefetch"), [([], 1), ("jobs", 1), (["jobs"], 0), (["jobs"], True)])
async def test_bad_consume_arguments_are_configuration_errors(
    broker_factory, queues: list[str], prefetch: int
) -> None:
    # One error type and style for every driver (asyncq/brokers/_kit.py check_consume).
    broker: Broker = await broker_factory()
    with pytest.raises(ConfigurationError, match=r"^consume\(\) "):
        await anext(broker.consume(queues, prefetch=prefetch))


async def test_publish_consume_ack(broker_factory, queue: str) -> None:
    broker: Broker = await broker_factory()
    sent = msg(queue, b"\x00hello\xff")
    await broker.publish(sent)
    assert await broker.queue_length(queue) == 1
    async with aclosing(broker.consume([queue], prefetch=1)) as it:
        delivery = await take(it)
        assert (delivery.id, delivery.queue, delivery.body) == (sent.id, queue, sent.body)
        assert delivery.delivery_count == 1
        await delivery.ack()
    assert await broker.queue_length(queue) == 0


async def test_publish_many_keeps_order(broker_factory, queue: str) -> None:
    broker: Broker = await broker_factory()
    sent = [msg(queue, str(i).encode()) for i in range(50)]
    await broker.publish_many(sent)
    assert await broker.queue_length(queue) == 50
    got = []
    async with aclosing(broker.consume([queue], prefetch=50)) as it:
        for _ in sent:
            delivery = await take(it)
            got.append(delivery.body)
            await delivery.ack()
    assert got == [m.body for m in sent]


async def test_priorities(broker_factory, queue: str) -> None:
    broker: Broker = await broker_factory()
    if not broker.capabilities.priorities:
        pytest.skip(f"{broker.url}: capabilities.priorities is False")
    await broker.publish_many(
        [msg(queue, b"low", priority=0), msg(queue, b"mid", priority=5), msg(queue, b"high", priority=9)]
    )
    async with aclosing(broker.consume([queue], prefetch=3)) as it:
        bodies = []
        for _ in range(3):
            delivery = await take(it)
            bodies.append(delivery.body)
            await delivery.ack()
    assert bodies == [b"high", b"mid", b"low"]


# prefetch 28: one claim takes the whole backlog, and its rows must come in turn order too.
@pytest.mark.parametrize("prefetch", [1, 28])
async def test_fair_keys_take_turns(broker_factory, queue: str, prefetch: int) -> None:
    broker: Broker = await broker_factory()
    if not broker.capabilities.fair_queuing:
        pytest.skip(f"{broker.url}: capabilities.fair_queuing is False")
    await broker.publish_many([msg(queue, b"a%d" % i, fair_key="a") for i in range(20)])
    await broker.publish_many([msg(queue, b"b%d" % i, fair_key="b") for i in range(3)])
    await broker.publish_many([msg(queue, b"c%d" % i, fair_key="c", fair_weight=2) for i in range(4)])
    await broker.publish_many([msg(queue, b"high", fair_key="a", priority=9)])
    assert await broker.queue_length(queue) == 28
    async with aclosing(broker.consume([queue], prefetch=prefetch)) as it:
        bodies = []
        for _ in range(28):
            delivery = await take(it)
            bodies.append(delivery.body)
            await delivery.ack()
    assert bodies[0] == b"high"  # priorities still come first
    rest = bodies[1:]
    assert sorted(rest) == sorted(
        [b"a%d" % i for i in range(20)] + [b"b0", b"b1", b"b2"] + [b"c%d" % i for i in range(4)]
    )
    for key in (b"a", b"b", b"c"):  # each key in its own publish order
        mine = [b for b in rest if b.startswith(key)]
        assert mine == sorted(mine, key=lambda b: int(b[1:]))
    # b and c, published after a's 20, are all served within the first 12, not after a's tail.
    assert max(rest.index(b) for b in (b"b2", b"c3")) < 12, rest
    # c, weighing 2, is served twice as fast as b: done before b's last.
    assert rest.index(b"c3") < rest.index(b"b2"), rest


async def test_fair_messages_are_purged_and_redelivered(broker_factory, queue: str) -> None:
    broker: Broker = await broker_factory()
    if not broker.capabilities.fair_queuing:
        pytest.skip(f"{broker.url}: capabilities.fair_queuing is False")
    await broker.publish_many([msg(queue, b"x", fair_key=key) for key in "aab"])
    assert await broker.purge(queue) == 3
    assert await broker.queue_length(queue) == 0
    await broker.publish_many([msg(queue, b"a", fair_key="a")])
    async with aclosing(broker.consume([queue], prefetch=1)) as it:
        first = await take(it)
        await first.nack()  # back to its key's list, delivered again
        again = await take(it)
        assert (again.body, again.delivery_count) == (b"a", 2)
        await again.ack()


async def test_delayed_delivery_not_before_eta(broker_factory, queue: str) -> None:
    broker: Broker = await broker_factory()
    eta = time.time() + 1.0
    await broker.publish(msg(queue, b"later", eta=eta))
    await broker.publish(msg(queue, b"now"))
    assert await broker.queue_length(queue) == 2
    async with aclosing(broker.consume([queue], prefetch=2)) as it:
        first = await take(it)
        assert first.body == b"now"
        await first.ack()
        second = await take(it)
        assert second.body == b"later"
        # A lower bound only: the message must not arrive before its eta.
        assert time.time() >= eta - 0.05
        await second.ack()


async def test_nack_redelivers_with_count(broker_factory, queue: str) -> None:
    broker: Broker = await broker_factory()
    await broker.publish(msg(queue, b"again"))
    async with aclosing(broker.consume([queue], prefetch=1)) as it:
        first = await take(it)
        await first.nack()
        second = await take(it)
        assert second.id == first.id and second.body == b"again"
        assert second.delivery_count == 2
        await second.ack()
    assert await broker.queue_length(queue) == 0


async def test_nack_with_delay(broker_factory, queue: str) -> None:
    broker: Broker = await broker_factory()
    await broker.publish(msg(queue))
    async with aclosing(broker.consume([queue], prefetch=1)) as it:
        first = await take(it)
        nacked_at = time.time()
        await first.nack(delay=0.8)
        second = await take(it)
        assert time.time() >= nacked_at + 0.75
        assert second.id == first.id
        await second.ack()


async def test_dead_letter_keeps_reason(broker_factory, queue: str) -> None:
    broker: Broker = await broker_factory()
    sent = msg(queue, b"poison")
    await broker.publish(sent)
    async with aclosing(broker.consume([queue], prefetch=1)) as it:
        delivery = await take(it)
        await delivery.dead_letter("cannot decode: bad bytes")
    assert await broker.queue_length(queue) == 0
    dead = await broker.dead_letters(queue)
    assert [(d.id, d.body, d.reason) for d in dead] == [(sent.id, b"poison", "cannot decode: bad bytes")]
    assert dead[0].queue == queue


async def test_purge_and_length_count_delayed(broker_factory, queue: str) -> None:
    broker: Broker = await broker_factory()
    await broker.publish_many([msg(queue) for _ in range(3)] + [msg(queue, eta=time.time() + 3600)])
    assert await broker.queue_length(queue) == 4
    assert await broker.purge(queue) == 4
    assert await broker.queue_length(queue) == 0


async def test_queues_are_isolated_and_multi_queue_consume(broker_factory, queue: str) -> None:
    broker: Broker = await broker_factory()
    other = queue + "-other"
    third = queue + "-third"
    await broker.publish(msg(queue, b"a"))
    await broker.publish(msg(other, b"b"))
    await broker.publish(msg(third, b"c"))
    async with aclosing(broker.consume([queue, other], prefetch=5)) as it:
        got = {(await take(it)).body, (await take(it)).body}
        assert got == {b"a", b"b"}
        await cancel(await expect_nothing(it, 0.3))
    assert await broker.queue_length(third) == 1
    await broker.purge(third)


async def test_prefetch_bounds_unsettled(broker_factory, queue: str) -> None:
    broker: Broker = await broker_factory()
    await broker.publish_many([msg(queue, str(i).encode()) for i in range(4)])
    async with aclosing(broker.consume([queue], prefetch=2)) as it:
        first, second = await take(it), await take(it)
        pending = await expect_nothing(it, 0.4)  # two unsettled: no third yet
        await first.ack()
        third = await asyncio.wait_for(pending, TIMEOUT)
        await second.ack()
        await third.ack()
        fourth = await take(it)
        await fourth.ack()
    assert {first.body, second.body, third.body, fourth.body} == {b"0", b"1", b"2", b"3"}


async def test_competing_consumers_get_each_message_once(broker_factory, queue: str) -> None:
    producer: Broker = await broker_factory()
    consumers = [await broker_factory(), await broker_factory()]
    total = 60
    await producer.publish_many([msg(queue, str(i).encode()) for i in range(total)])
    seen: list[bytes] = []
    done = asyncio.Event()

    async def run(broker: Broker) -> None:
        async with aclosing(broker.consume([queue], prefetch=5)) as it:
            async for delivery in it:
                seen.append(delivery.body)
                await delivery.ack()
                if len(seen) >= total:
                    done.set()

    tasks = [asyncio.create_task(run(b)) for b in consumers]
    try:
        await asyncio.wait_for(done.wait(), TIMEOUT)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(seen, key=int) == [str(i).encode() for i in range(total)]


async def test_messages_survive_reconnect(broker_factory, queue: str) -> None:
    first: Broker = await broker_factory()
    if not first.capabilities.durable:
        pytest.skip(f"{first.url}: capabilities.durable is False")
    sent = msg(queue, b"kept")
    await first.publish(sent)
    await first.aclose()
    second: Broker = await broker_factory()
    async with aclosing(second.consume([queue], prefetch=1)) as it:
        delivery = await take(it)
        assert delivery.id == sent.id
        await delivery.ack()


async def test_lost_delivery_is_redelivered_after_visibility_timeout(broker_factory, queue: str) -> None:
    dying: Broker = await broker_factory(visibility_timeout=1)
    if not dying.capabilities.redelivers_lost:
        pytest.skip(f"{dying.url}: capabilities.redelivers_lost is False")
    sent = msg(queue, b"orphan")
    await dying.publish(sent)
    it = dying.consume([queue], prefetch=1)
    delivery = await take(it)
    assert delivery.delivery_count == 1
    await it.aclose()  # type: ignore[attr-defined]
    await dying.aclose()  # the consumer "dies" without settling: no more lease renewals
    survivor: Broker = await broker_factory(visibility_timeout=1)
    async with aclosing(survivor.consume([queue], prefetch=1)) as it2:
        again = await take(it2)
        assert again.id == sent.id and again.delivery_count == 2
        await again.ack()
    assert await survivor.queue_length(queue) == 0


async def test_live_consumer_keeps_its_claim(broker_factory, queue: str) -> None:
    owner: Broker = await broker_factory(visibility_timeout=1)
    if not owner.capabilities.redelivers_lost:
        pytest.skip(f"{owner.url}: capabilities.redelivers_lost is False")
    other: Broker = await broker_factory(visibility_timeout=1)
    await owner.publish(msg(queue, b"long"))
    async with aclosing(owner.consume([queue], prefetch=1)) as it:
        delivery = await take(it)
        async with aclosing(other.consume([queue], prefetch=1)) as it2:
            # Three visibility timeouts pass while the owner is alive and renewing its claim.
            pending = await expect_nothing(it2, 3.0)
            await delivery.ack()
            await cancel(pending)


async def _dead_letter_all(broker: Broker, queue: str, count: int, reason: str) -> list[Delivery]:
    """Take ``count`` messages of ``queue`` one at a time and dead-letter each."""
    taken = []
    async with aclosing(broker.consume([queue], prefetch=1)) as it:
        for _ in range(count):
            delivery = await take(it)
            await delivery.dead_letter(reason)
            taken.append(delivery)
    return taken


async def test_dead_letter_show_and_requeue_one_resets_delivery_count(broker_factory, queue: str) -> None:
    broker: Broker = await broker_factory()
    first, second = msg(queue, b"first"), msg(queue, b"second")
    await broker.publish(first)
    async with aclosing(broker.consume([queue], prefetch=1)) as it:
        delivery = await take(it)
        await delivery.nack()
        again = await take(it)
        assert again.id == first.id and again.delivery_count == 2
        await again.dead_letter("first reason")
        await broker.publish(second)
        other = await take(it)
        await other.dead_letter("second reason")
    shown = await broker.get_dead_letter(queue, first.id)
    assert shown is not None
    assert (shown.id, shown.queue, shown.body, shown.reason) == (first.id, queue, b"first", "first reason")
    assert await broker.get_dead_letter(queue, "no-such-id") is None
    assert await broker.get_dead_letter(queue + "-other", first.id) is None

    assert await broker.requeue_dead_letter(queue, first.id) is True
    assert await broker.requeue_dead_letter(queue, first.id) is False  # moved, not copied
    assert await broker.requeue_dead_letter(queue, "no-such-id") is False
    assert [d.id for d in await broker.dead_letters(queue)] == [second.id]
    assert await broker.queue_length(queue) == 1
    async with aclosing(broker.consume([queue], prefetch=1)) as it:
        back = await take(it)
        assert (back.id, back.body, back.delivery_count) == (first.id, b"first", 1)
        await back.ack()
    assert await broker.purge_dead_letters(queue) == 1


async def test_requeue_all_then_purge_dead_letters(broker_factory, queue: str) -> None:
    broker: Broker = await broker_factory()
    sent = [msg(queue, str(i).encode()) for i in range(5)]
    await broker.publish_many(sent)
    await _dead_letter_all(broker, queue, 5, "poison")
    assert len(await broker.dead_letters(queue)) == 5
    assert await broker.requeue_dead_letters(queue) == 5
    assert await broker.dead_letters(queue) == []
    assert await broker.queue_length(queue) == 5
    again = await _dead_letter_all(broker, queue, 5, "poison again")
    assert sorted(d.body for d in again) == sorted(m.body for m in sent)
    assert all(d.delivery_count == 1 for d in again)
    assert await broker.purge_dead_letters(queue) == 5
    assert await broker.dead_letters(queue) == []
    assert await broker.requeue_dead_letters(queue) == 0
    assert await broker.purge_dead_letters(queue) == 0
    assert await broker.queue_length(queue) == 0
