"""Broker drivers, chosen by URL scheme.

A new driver is one module here plus one entry in :data:`BROKERS` (or, outside asyncq, an
entry point in the ``asyncq.brokers`` group). Drivers are imported only when chosen.
"""

from __future__ import annotations

from typing import Any, Final

from asyncq._drivers import driver_class
from asyncq.brokers.base import Broker, BrokerCapabilities, DeadLetter, Delivery, OutgoingMessage

__all__ = [
    "BROKERS",
    "Broker",
    "BrokerCapabilities",
    "DeadLetter",
    "Delivery",
    "OutgoingMessage",
    "broker_from_url",
]

#: URL scheme -> "module:Class" of the built-in broker drivers.
BROKERS: Final[dict[str, str]] = {
    "memory": "asyncq.brokers.memory:MemoryBroker",
    "sqlite": "asyncq.brokers.sqlite:SQLiteBroker",
    "redis": "asyncq.brokers.redis:RedisBroker",
    "rediss": "asyncq.brokers.redis:RedisBroker",
    "redis+cluster": "asyncq.brokers.redis:RedisBroker",
    "rediss+cluster": "asyncq.brokers.redis:RedisBroker",
    "redis+sentinel": "asyncq.brokers.redis:RedisBroker",
    "amqp": "asyncq.brokers.rabbitmq:RabbitMQBroker",
    "amqps": "asyncq.brokers.rabbitmq:RabbitMQBroker",
    "postgresql": "asyncq.brokers.postgres:PostgresBroker",
    "postgres": "asyncq.brokers.postgres:PostgresBroker",
    "sqs": "asyncq.brokers.sqs:SQSBroker",
    "kafka": "asyncq.brokers.kafka:KafkaBroker",
}


def broker_from_url(url: str, **options: Any) -> Broker:
    """Build (not connect) the broker for ``url``; ``options`` are transport options."""
    cls = driver_class("broker", url, BROKERS, "asyncq.brokers")
    broker: Broker = cls(url, **options)
    return broker
