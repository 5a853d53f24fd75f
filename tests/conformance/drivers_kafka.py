"""Conformance fixtures for the kafka:// broker, against a Tansu broker the tests start.

Every test gets its own topic prefix and consumer group. Topics get one partition here, so
that the suite's publish-order checks hold (Kafka orders within a partition only).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from asyncq.brokers import Broker, broker_from_url
from tests.factories import connected
from tests.servers import tansu_kafka

BrokerFactory = Callable[..., Awaitable[Broker]]


@pytest.fixture
async def kafka_broker_factory() -> AsyncIterator[BrokerFactory]:
    url = tansu_kafka().url
    tag = uuid.uuid4().hex[:10]

    def build(**options: Any) -> Broker:
        options.pop("visibility_timeout", None)  # a lease option: Kafka has consumer groups instead
        fixed = {"topic_prefix": f"t{tag}.", "group_id": f"g{tag}", "partitions": 1, "session_timeout": 2}
        return broker_from_url(url, **{**fixed, **options})

    async with connected(build) as make:
        yield make
