"""The event-bus contract: how batches of monitoring events travel, one driver per transport.

An event bus carries opaque batches (the encoded events of one flush, see asyncq/events/codec.py)
from the processes that emit them to every reader. It rides on the broker's transport, chosen
by the broker URL's scheme, and shares the broker's transport options (each bus reads the ones
it understands). Every driver passes tests/conformance/test_event_bus_contract.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final, Protocol, runtime_checkable

from asyncq._drivers import driver_class

__all__ = ["EVENT_BUSES", "EventBus", "EventReader", "event_bus_from_url"]

#: URL scheme -> "module:Class" of the built-in event buses (the brokers' schemes).
EVENT_BUSES: Final[dict[str, str]] = {
    "memory": "asyncq.events.memory:MemoryEventBus",
    "sqlite": "asyncq.events.sqlite:SQLiteEventBus",
    "redis": "asyncq.events.redis:RedisEventBus",
    "rediss": "asyncq.events.redis:RedisEventBus",
    "redis+cluster": "asyncq.events.redis:RedisEventBus",
    "rediss+cluster": "asyncq.events.redis:RedisEventBus",
    "redis+sentinel": "asyncq.events.redis:RedisEventBus",
    "amqp": "asyncq.events.rabbitmq:RabbitMQEventBus",
    "amqps": "asyncq.events.rabbitmq:RabbitMQEventBus",
    "postgresql": "asyncq.events.postgres:PostgresEventBus",
    "postgres": "asyncq.events.postgres:PostgresEventBus",
}


@runtime_checkable
class EventReader(Protocol):
    """One subscription: iterate it for batches; ``aclose`` ends it (also when never iterated)."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        """The reader itself."""

    async def __anext__(self) -> bytes:
        """The next batch; StopAsyncIteration once the bus or the reader is closed."""

    async def aclose(self) -> None:
        """Unsubscribe; idempotent."""


@runtime_checkable
class EventBus(Protocol):
    """Fan-out of event batches: every reader gets every batch published while it reads.

    Attributes:
        url: the URL it was built from.
        keeps_history: ``read(history=True)`` also yields the batches kept from before (a
            bounded number: ``history_limit``, approximately on Redis).
    """

    url: str
    keeps_history: bool

    async def connect(self) -> None:
        """Open connections and create what is missing; idempotent."""

    async def aclose(self) -> None:
        """Release connections; readers still iterating end."""

    async def publish(self, batch: bytes) -> None:
        """Send one batch to every reader, within the bus's deadline."""

    async def subscribe(self, *, history: bool = False) -> EventReader:
        """Start reading: every batch published after this returns, in order (with ``history``,
        the kept ones before them)."""


def event_bus_from_url(url: str, **options: Any) -> EventBus:
    """Build (not connect) the event bus for a broker ``url``; ``options``: the broker's transport options."""
    cls = driver_class("event bus", url, EVENT_BUSES, "asyncq.event_buses")
    bus: EventBus = cls(url, **options)
    return bus
