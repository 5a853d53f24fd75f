"""kafka:// behaviour beyond the shared contract, against a Tansu broker the tests start."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing

import pytest

pytest.importorskip("aiokafka", reason="the kafka extra is not installed")

from asyncq.brokers import Delivery, OutgoingMessage, broker_from_url
from asyncq.brokers.kafka import KafkaBroker
from asyncq.exceptions import BrokerConnectionError, ConfigurationError, MessageTooLargeError
from tests.helpers import until
from tests.servers import DurableTansu, tansu_kafka
from tests.services import require_service

pytestmark = pytest.mark.kafka


def broker(**options: object) -> KafkaBroker:
    tag = uuid.uuid4().hex[:10]
    defaults: dict[str, object] = {"topic_prefix": f"i{tag}.", "group_id": f"g{tag}", "session_timeout": 2}
    return KafkaBroker(tansu_kafka().url, **{**defaults, **options})


def msg(queue: str, body: bytes = b"x") -> OutgoingMessage:
    return OutgoingMessage(id=str(uuid.uuid4()), queue=queue, body=body)


async def test_message_over_the_size_limit_is_refused_and_nothing_is_sent() -> None:
    async with broker(max_message_size=4096, partitions=1) as kafka:
        with pytest.raises(MessageTooLargeError, match="at most 4096"):
            await kafka.publish_many([msg("big"), msg("big", b"a" * 5000)])
        assert await kafka.queue_length("big") == 0


async def test_records_with_one_key_keep_their_order_across_partitions() -> None:
    async with broker(partitions=4, partition_key="queue") as kafka:
        sent = [msg("ordered", str(i).encode()) for i in range(30)]
        await kafka.publish_many(sent)
        got = []
        async with aclosing(kafka.consume(["ordered"], prefetch=30)) as it:
            for _ in sent:
                delivery = await asyncio.wait_for(anext(it), 20)
                got.append(delivery.body)
                await delivery.ack()
        assert got == [m.body for m in sent]
        assert await kafka.queue_length("ordered") == 0


def group_options() -> dict[str, object]:
    """Options of one private group; a second KafkaBroker with them is a member of the same group."""
    tag = uuid.uuid4().hex[:10]
    # Commits only on a rebalance and at close: the tests see exactly those.
    return {"topic_prefix": f"r{tag}.", "group_id": f"g{tag}", "session_timeout": 2, "commit_interval": 60}


async def test_a_rebalance_that_keeps_a_partition_hands_out_nothing_twice_and_loses_nothing() -> None:
    options = group_options()
    async with KafkaBroker(tansu_kafka().url, partitions=1, **options) as kafka:
        sent = [msg("kept", str(i).encode()) for i in range(20)]
        await kafka.publish_many(sent)
        await kafka.publish(msg("other"))
        async with aclosing(kafka.consume(["kept"], prefetch=10)) as it:
            running = [await asyncio.wait_for(anext(it), 20) for _ in range(10)]
            # A second member of the group, for another queue: the group rebalances, and
            # "kept" comes back to the first member while its 10 deliveries still run.
            async with aclosing(kafka.consume(["other"], prefetch=1)) as other:
                await (await asyncio.wait_for(anext(other), 30)).ack()
                for delivery in running:
                    await delivery.ack()  # leases from before the rebalance still count
                rest = [await asyncio.wait_for(anext(it), 20) for _ in range(10)]
                for delivery in rest:
                    await delivery.ack()
        bodies = [d.body for d in running + rest]
        assert sorted(bodies) == sorted(m.body for m in sent), "a record was handed out twice"
        assert await kafka.queue_length("kept") == 0


async def test_partitions_moved_to_a_new_member_are_run_there_and_nothing_is_lost() -> None:
    options = group_options()
    url = tansu_kafka().url
    async with KafkaBroker(url, partitions=2, **options) as first, KafkaBroker(url, **options) as second:
        sent = {str(i).encode() for i in range(20)}
        await first.publish_many([msg("moved", body) for body in sorted(sent)])
        seen: list[bytes] = []
        async with aclosing(first.consume(["moved"], prefetch=10)) as it:
            running = [await asyncio.wait_for(anext(it), 20) for _ in range(10)]
            # The second member takes half of the partitions, the first member's unfinished
            # records on them included: it runs them too (at-least-once).
            async with aclosing(second.consume(["moved"], prefetch=10)) as other:

                async def drain(deliveries: AsyncIterator[Delivery]) -> None:
                    while not sent <= set(seen):
                        delivery = await anext(deliveries)
                        seen.append(delivery.body)
                        await delivery.ack()

                for delivery in running:
                    seen.append(delivery.body)
                    await delivery.ack()  # on a partition gone to the other member: ignored
                tasks = [asyncio.ensure_future(drain(it)), asyncio.ensure_future(drain(other))]
                await asyncio.wait_for(asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED), 60)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        assert set(seen) == sent
    async with KafkaBroker(url, **options) as kafka:
        await until(lambda: _lag_is_zero(kafka, "moved"), what="every record to be committed")


async def test_records_a_dead_consumer_held_come_back_as_redeliveries_and_later_ones_do_not() -> None:
    options = group_options()
    url = tansu_kafka().url
    first = [msg("held", f"first {i}".encode()) for i in range(3)]
    later = [msg("held", f"later {i}".encode()) for i in range(2)]
    async with KafkaBroker(url, partitions=1, **options) as kafka:
        await kafka.publish_many(first)
        it = kafka.consume(["held"], prefetch=3)
        taken = [await asyncio.wait_for(anext(it), 20) for _ in first]
        assert [d.delivery_count for d in taken] == [1, 1, 1]
        await it.aclose()
        # The broker closes with the three unsettled: nothing is committed, as when the
        # worker holding them dies.
    async with KafkaBroker(url, **options) as kafka:
        await kafka.publish_many(later)
        async with aclosing(kafka.consume(["held"], prefetch=5)) as again:
            counts = {}
            for _ in range(5):
                delivery = await asyncio.wait_for(anext(again), 30)
                counts[delivery.body] = delivery.delivery_count
                await delivery.ack()
    assert counts == {**{m.body: 2 for m in first}, **{m.body: 1 for m in later}}


async def _lag_is_zero(kafka: KafkaBroker, queue: str) -> bool:
    return await kafka.queue_length(queue) == 0


async def test_closing_during_a_rebalance_commits_once_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aiokafka.consumer.group_coordinator")
    options = group_options()
    async with KafkaBroker(tansu_kafka().url, partitions=1, **options) as kafka:
        await kafka.publish_many([msg("closing") for _ in range(10)])
        await kafka.publish(msg("other"))
        it = kafka.consume(["closing"], prefetch=10)
        running = [await asyncio.wait_for(anext(it), 20) for _ in range(10)]
        # A second member joins: the first is told to rejoin, and gives up its partitions
        # until the group settles (aiokafka logs the revocation).
        other = kafka.consume(["other"], prefetch=1)
        joined = asyncio.ensure_future(anext(other))
        topic = kafka.settings.topic("closing")

        def revoked() -> bool:
            said = [r.getMessage() for r in caplog.records]
            return any(m.startswith("Revoking") and f"'{topic}'" in m for m in said)

        await until(revoked, what="the first member to see the rebalance")
        for delivery in running:
            await delivery.ack()
        await it.aclose()  # its last commit is refused until the rebalance ends
        await (await asyncio.wait_for(joined, 30)).ack()
        await other.aclose()
    async with KafkaBroker(tansu_kafka().url, **options) as kafka:
        assert await kafka.queue_length("closing") == 0
    assert not [r for r in caplog.records if "last offset commit failed" in r.getMessage()]


@pytest.fixture
def durable_tansu() -> Iterator[DurableTansu]:
    server = DurableTansu()
    server.start()
    try:
        yield server
    finally:
        server.remove()


async def _take(kafka: KafkaBroker, queue: str, wanted: set[bytes], seen: set[bytes]) -> None:
    """Consume and ack until every body in ``wanted`` is in ``seen``."""
    async with aclosing(kafka.consume([queue], prefetch=50)) as it:
        while not wanted <= seen:
            delivery = await asyncio.wait_for(anext(it), 30)
            seen.add(delivery.body)
            await delivery.ack()


async def test_sigkilled_tansu_restarted_on_its_storage_loses_no_acknowledged_message(
    durable_tansu: DurableTansu,
) -> None:
    tag = uuid.uuid4().hex[:10]
    options: dict[str, object] = {"topic_prefix": f"d{tag}.", "group_id": f"g{tag}", "session_timeout": 2}
    before = [msg("durable", f"before-{i}".encode()) for i in range(100)]
    after = [msg("durable", f"after-{i}".encode()) for i in range(100)]
    seen: set[bytes] = set()
    async with KafkaBroker(durable_tansu.url, partitions=2, **options) as kafka:
        await kafka.publish_many(before)  # returns once acknowledged (acks="all")
        await _take(kafka, "durable", {m.body for m in before[:30]}, seen)
    durable_tansu.kill()
    durable_tansu.start()
    async with KafkaBroker(durable_tansu.url, partitions=2, **options) as kafka:
        await kafka.publish_many(after)
        await _take(kafka, "durable", {m.body for m in before + after}, seen)


def test_bad_urls_and_options_are_one_line_errors() -> None:
    with pytest.raises(ConfigurationError, match="names no broker"):
        broker_from_url("kafka://")
    with pytest.raises(ConfigurationError, match="is not HOST:PORT"):
        broker_from_url("kafka://host:port")
    with pytest.raises(ConfigurationError, match="did you mean 'partitions'"):
        broker_from_url("kafka://localhost:9092?partitons=3")
    with pytest.raises(ConfigurationError, match="Kafka topic"):
        KafkaBroker("kafka://localhost:9092").settings.topic("a b")


async def test_wrong_server_is_a_clear_error_within_the_deadline() -> None:
    redis_port = require_service("redis").rsplit(":", 1)[1].split("/")[0]
    kafka = broker_from_url(f"kafka://127.0.0.1:{redis_port}?connect_timeout=3&request_timeout=3")
    with pytest.raises(BrokerConnectionError, match=r"Kafka connect at 127\.0\.0\.1"):
        await asyncio.wait_for(kafka.connect(), 30)


async def test_a_call_timing_out_on_a_live_kafka_server_does_not_blame_the_port() -> None:
    # A consumer's group join can outlast its deadline on a busy or rebalancing server: the
    # error must not say that something else than Kafka listens there.
    async with broker() as kafka:
        with pytest.raises(BrokerConnectionError) as info:
            await kafka._deadline("join", asyncio.Event().wait(), 0.1)
    message = str(info.value)
    assert "speaks something else" not in message
    assert "a Kafka server answers there, but the call did not finish in time" in message


async def test_a_consumer_whose_start_timed_out_leaves_the_group() -> None:
    # A group join can outlast its deadline (a busy server, a rebalance waiting for a dead
    # member). The abandoned consumer must leave: a member that goes on heartbeating holds
    # its share of the partitions and nobody reads them (seen in the chaos suite's kill case).
    from aiokafka import AIOKafkaConsumer

    from asyncq.brokers._kafka_consumer import ConsumerSession

    tag = uuid.uuid4().hex[:10]
    options = {"topic_prefix": f"i{tag}.", "group_id": f"g{tag}", "session_timeout": 2, "partitions": 4}
    async with broker(**options) as kafka:
        sent = [msg("held") for _ in range(20)]
        await kafka.publish_many(sent)
        topic = kafka.settings.topic("held")
        abandoned = ConsumerSession(
            [topic],
            kafka._move,
            commit_interval=0.2,
            group_id=kafka.settings.group_id,
            session_timeout_ms=2000,
            heartbeat_interval_ms=200,
            bootstrap_servers=kafka.settings.bootstrap,
        )
        with pytest.raises(TimeoutError):
            await abandoned.start(0.2)  # past the coordinator's creation, before the join ends
        assert isinstance(abandoned.consumer, AIOKafkaConsumer)
        got: set[str] = set()
        async with aclosing(kafka.consume(["held"], prefetch=20)) as it:
            while len(got) < len(sent):
                delivery = await asyncio.wait_for(anext(it), 20)
                got.add(delivery.id)
                await delivery.ack()
        assert got == {m.id for m in sent}
