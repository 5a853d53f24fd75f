"""sqs:// behaviour beyond the shared contract, against a moto server the tests start."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

pytest.importorskip("aiobotocore", reason="the sqs extra is not installed")

from asyncq.brokers import OutgoingMessage, broker_from_url
from asyncq.brokers._sqs_codec import encode
from asyncq.brokers.sqs import SQSBroker
from asyncq.exceptions import BrokerConnectionError, ConfigurationError, MessageTooLargeError
from tests.conformance.drivers_sqs import delete_queues
from tests.servers import moto_sqs
from tests.services import require_service

pytestmark = pytest.mark.sqs

TIMEOUT = 15.0


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = f"i{uuid.uuid4().hex[:10]}-"
    yield name
    await delete_queues(moto_sqs().url, name)


def msg(queue: str, body: bytes = b"x", **kw: object) -> OutgoingMessage:
    return OutgoingMessage(id=str(uuid.uuid4()), queue=queue, body=body, **kw)  # type: ignore[arg-type]


async def test_message_over_the_size_limit_is_refused_and_nothing_is_sent(prefix: str) -> None:
    async with SQSBroker(moto_sqs().url, queue_prefix=prefix, wait_time=1) as broker:
        small, large = msg("big"), msg("big", b"a" * 262_144)
        with pytest.raises(MessageTooLargeError, match="at most 262144"):
            await broker.publish_many([small, large])
        with pytest.raises(MessageTooLargeError):
            await broker.publish(large)
        assert await broker.queue_length("big") == 0
        await broker.publish(msg("big", b"\xff" * 200_000))  # binary, no base64: still fits
        assert await broker.queue_length("big") == 1


async def test_early_receipt_of_a_far_eta_is_sent_on_not_delivered(prefix: str) -> None:
    # A message whose eta lies past what SQS can delay arrives early and is re-sent (a hop).
    # Here the hop is made short by sending such a message without its SQS delay.
    async with SQSBroker(moto_sqs().url, queue_prefix=prefix, wait_time=1) as broker:
        eta = time.time() + 1.5
        message = msg("hops", b"later", eta=eta)
        entry = broker._entry(message)
        entry.pop("DelaySeconds")
        assert "asyncq-eta" not in entry["MessageAttributes"]  # short etas use SQS's own delay
        body, attributes = encode(message.id, message.body, queue="hops", max_size=262_144, eta=eta)
        url = await broker._url_of(broker.settings.physical_name("hops"))
        await broker._client.call(
            "send_message", QueueUrl=url, MessageBody=body, MessageAttributes=attributes
        )
        async with aclosing(broker.consume(["hops"], prefetch=1)) as it:
            delivery = await asyncio.wait_for(anext(it), TIMEOUT)
            assert time.time() >= eta
            assert (delivery.id, delivery.body, delivery.delivery_count) == (message.id, b"later", 1)
            await delivery.ack()
        assert await broker.queue_length("hops") == 0


async def test_fifo_deduplicates_by_task_id(prefix: str) -> None:
    async with SQSBroker(moto_sqs().url, queue_prefix=prefix, fifo=True, wait_time=1) as broker:
        once = msg("dedup")
        await broker.publish(once)
        await broker.publish(once)  # a producer's retry: SQS drops the copy
        assert await broker.queue_length("dedup") == 1


async def test_priority_bands_are_separate_queues(prefix: str) -> None:
    async with SQSBroker(moto_sqs().url, queue_prefix=prefix, priority_steps="0,5", wait_time=1) as broker:
        await broker.publish_many([msg("bands", priority=0), msg("bands", priority=7)])
        reply = await broker._client.call("list_queues", QueueNamePrefix=prefix)
        names = sorted(url.rsplit("/", 1)[1] for url in reply["QueueUrls"])
        assert names == [f"{prefix}bands", f"{prefix}bands-p5"]
        assert await broker.queue_length("bands") == 2


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'visibility_timeout'"):
        broker_from_url("sqs://?visibilty_timeout=3")
    with pytest.raises(ConfigurationError, match="wait_time"):
        broker_from_url("sqs://?wait_time=30")
    with pytest.raises(ConfigurationError, match="give the region as"):
        broker_from_url("sqs://host/us-east-1")
    with pytest.raises(ConfigurationError, match="SQS allows letters"):
        SQSBroker("sqs://?region=us-east-1").settings.physical_name("a.b")
    with pytest.raises(ConfigurationError, match="one weight per priority step"):
        broker_from_url("sqs://?priority_steps=0,9&priority_weights=1")


async def test_wrong_server_is_a_clear_error_within_the_deadline() -> None:
    redis_port = require_service("redis").rsplit(":", 1)[1].split("/")[0]
    url = f"sqs://a:b@127.0.0.1:{redis_port}?tls=false&region=us-east-1&connect_timeout=3&request_timeout=3"
    broker = broker_from_url(url)
    with pytest.raises(BrokerConnectionError, match=r"SQS list_queues at http://127\.0\.0\.1"):
        await asyncio.wait_for(broker.connect(), 30)
