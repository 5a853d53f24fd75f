"""Driver fixtures for the shared contract suites.

``broker_factory`` / ``backend_factory`` are parametrized over every registered driver and
resolved lazily with ``request.getfixturevalue``, so a run selecting ``-m "not redis"``
never touches Redis. A driver adds one ``<scheme>_broker_factory`` (or
``<scheme>_backend_factory``) fixture, in its own module imported below,
and one entry in ``BROKER_PARAMS`` / ``BACKEND_PARAMS``. Each factory is an async callable
``make(**options)`` returning a connected driver; all instances one factory makes share the
same store (same file, key prefix, vhost...), as separate worker processes would, and are
closed and cleaned up after the test.
"""

from __future__ import annotations

import pytest

# Fixtures are imported by name (pytest_plugins is only allowed in the rootdir's conftest).
from tests.conformance.drivers_embedded import (  # noqa: F401
    memory_backend_factory,
    memory_broker_factory,
    sqlite_backend_factory,
    sqlite_broker_factory,
)
from tests.conformance.drivers_kafka import kafka_broker_factory  # noqa: F401
from tests.conformance.drivers_mysql import mysql_backend_factory, mysql_url  # noqa: F401
from tests.conformance.drivers_postgres import (  # noqa: F401
    postgres_backend_factory,
    postgres_broker_factory,
    postgres_schema,
)
from tests.conformance.drivers_rabbitmq import (  # noqa: F401
    rabbitmq_aiopika_broker_factory,
    rabbitmq_broker_factory,
    rabbitmq_url,
    rpc_backend_factory,
)
from tests.conformance.drivers_redis import (  # noqa: F401
    redis_backend_factory,
    redis_broker_factory,
    redis_cluster,
    redis_cluster_backend_factory,
    redis_cluster_broker_factory,
    redis_pooled_backend_factory,
    redis_pooled_broker_factory,
    redis_sentinel,
    redis_sentinel_backend_factory,
    redis_sentinel_broker_factory,
)
from tests.conformance.drivers_sqs import sqs_broker_factory, sqs_fifo_broker_factory  # noqa: F401

#: Driver name -> pytest param (with the service marker). Keep in step with the registries.
BROKER_PARAMS = {
    "memory": pytest.param("memory"),
    "sqlite": pytest.param("sqlite"),
    "redis": pytest.param("redis", marks=pytest.mark.redis),
    "redis_pooled": pytest.param("redis_pooled", marks=pytest.mark.redis),  # multiplex=false
    # The same driver over servers the tests start: a Cluster, and a Sentinel-managed master.
    "redis_cluster": pytest.param("redis_cluster", marks=[pytest.mark.redis, pytest.mark.slow]),
    "redis_sentinel": pytest.param("redis_sentinel", marks=[pytest.mark.redis, pytest.mark.slow]),
    "rabbitmq": pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    # The same driver with its consumers on aio-pika (client=aio-pika) instead of the lean client.
    "rabbitmq_aiopika": pytest.param("rabbitmq_aiopika", marks=pytest.mark.rabbitmq),
    "postgres": pytest.param("postgres", marks=pytest.mark.postgres),
    # moto's server, started by the tests: standard queues, and FIFO queues with priority bands.
    "sqs": pytest.param("sqs", marks=pytest.mark.sqs),
    "sqs_fifo": pytest.param("sqs_fifo", marks=pytest.mark.sqs),
    # A Tansu broker (Kafka protocol), started by the tests.
    "kafka": pytest.param("kafka", marks=pytest.mark.kafka),
}
BACKEND_PARAMS = {
    "memory": pytest.param("memory"),
    "sqlite": pytest.param("sqlite"),
    "redis": pytest.param("redis", marks=pytest.mark.redis),
    "redis_pooled": pytest.param("redis_pooled", marks=pytest.mark.redis),
    "redis_cluster": pytest.param("redis_cluster", marks=[pytest.mark.redis, pytest.mark.slow]),
    "redis_sentinel": pytest.param("redis_sentinel", marks=[pytest.mark.redis, pytest.mark.slow]),
    "rpc": pytest.param("rpc", marks=pytest.mark.rabbitmq),
    "postgres": pytest.param("postgres", marks=pytest.mark.postgres),
    "mysql": pytest.param("mysql", marks=pytest.mark.mysql),
}


@pytest.fixture(params=list(BROKER_PARAMS.values()))
def broker_factory(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return request.getfixturevalue(f"{request.param}_broker_factory")


@pytest.fixture(params=list(BACKEND_PARAMS.values()))
def backend_factory(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return request.getfixturevalue(f"{request.param}_backend_factory")
