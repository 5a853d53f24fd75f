"""The control-channel contract: worker presence, broadcast with replies, stored revocations.

A broker's control channel carries the cluster's management traffic, beside its queues:

* **presence**: each worker writes a heartbeat record (opaque bytes) with a time to live;
  :meth:`ControlChannel.workers` lists the records, live or recently expired;
* **broadcast with replies**: a client sends one request (opaque bytes) to every listening
  worker and collects the replies until a timeout (or until it has as many as it expects);
* **revocations**: task ids stored with an expiry, so a worker started later honours them.

Like brokers, channels move bytes and know nothing of tasks: what the bytes mean is
asyncq.control's business. Every channel passes tests/conformance/test_control_contract.py.
:func:`control_channel_for` picks the channel of a broker by its URL scheme.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, cast, runtime_checkable
from urllib.parse import urlsplit

from asyncq._connect import with_connect_timeout
from asyncq._utils import import_string
from asyncq.brokers import broker_from_url
from asyncq.exceptions import ConfigurationError

if TYPE_CHECKING:
    from asyncq.brokers.base import Broker

__all__ = [
    "CONTROL_CHANNELS",
    "ControlChannel",
    "ControlRequest",
    "LeaseHolder",
    "LeaseReclaimer",
    "PresenceRecord",
    "control_channel_for",
]


@dataclass(frozen=True, slots=True)
class PresenceRecord:
    """One worker's last heartbeat.

    Attributes:
        worker: the worker's id (its hostname, unique in the cluster).
        info: the bytes it sent with the heartbeat.
        seen: epoch seconds of that heartbeat.
        expires: epoch seconds after which the worker counts as lost.
    """

    worker: str
    info: bytes
    seen: float
    expires: float


@dataclass(slots=True)
class ControlRequest:
    """A broadcast request as a listening worker receives it; answer with :meth:`reply`."""

    body: bytes
    _reply: Callable[[bytes], Awaitable[None]]

    async def reply(self, body: bytes) -> None:
        """Send ``body`` back to the client that broadcast the request."""
        await self._reply(body)


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """Another worker, as a :class:`LeaseReclaimer` needs it to judge whether it is dead.

    Attributes:
        worker: its name.
        owner: the broker's lease owner id of its messages.
        host / pid: where it runs.
        is_lost: it missed its heartbeats (alive but paused, or dead).
        queues: the queues it consumed.
    """

    worker: str
    owner: str
    host: str
    pid: int
    is_lost: bool
    queues: tuple[str, ...] = ()


@runtime_checkable
class LeaseReclaimer(Protocol):
    """Optional, for channels whose broker leases messages: hand a dead worker's messages back now.

    Heartbeats alone cannot tell a dead worker from a paused one, so each reclaimer uses a
    liveness signal that survives a pause (a local pid, a server-side connection).
    """

    async def release_dead(self, holders: Sequence[LeaseHolder]) -> dict[str, int]:
        """Release the leases of the ``holders`` proven dead; return ``{worker: messages released}``."""


@runtime_checkable
class ControlChannel(Protocol):
    """A broker's side channel for presence, broadcast with replies and revocations.

    A channel that stores the presence records (so :meth:`workers` is one quick read) says so
    with a class attribute ``stores_presence = True``; then a broadcast to every worker returns
    as soon as each live worker answered. Without it the broadcast waits its whole timeout.
    """

    async def connect(self) -> None:
        """Open what the channel needs (its broker is connected already); idempotent."""

    async def aclose(self) -> None:
        """Stop listening and release what the channel opened (not the broker)."""

    async def beat(self, worker: str, info: bytes, *, ttl: float) -> None:
        """Store ``worker``'s heartbeat ``info``; it counts as lost after ``ttl`` seconds."""

    async def leave(self, worker: str) -> None:
        """Remove ``worker``'s presence record (a clean shutdown)."""

    async def workers(self, *, timeout: float = 1.0) -> list[PresenceRecord]:
        """The presence records known, live and recently lost, in no particular order.

        A channel without storage may gather them from the live workers within ``timeout``.
        """

    async def broadcast(self, body: bytes, *, timeout: float, replies: int | None = None) -> list[bytes]:
        """Send ``body`` to every listening worker; return the replies received within ``timeout``.

        Returns early once ``replies`` replies have arrived (when given).
        """

    def listen(self, worker: str) -> AsyncIterator[ControlRequest]:
        """Yield the requests broadcast from now on, until the iterator is closed."""

    async def revoke(self, task_ids: Sequence[str], *, expires: float) -> None:
        """Store ``task_ids`` as revoked for ``expires`` seconds."""

    async def revoked(self) -> dict[str, float]:
        """The stored revocations not yet expired: task id -> epoch seconds it expires."""


#: URL scheme -> "module:Class" of the built-in control channels (constructed with the broker).
CONTROL_CHANNELS: Final[dict[str, str]] = {
    "memory": "asyncq.brokers.memory_control:MemoryControlChannel",
    "sqlite": "asyncq.brokers.sqlite_control:SQLiteControlChannel",
    "redis": "asyncq.brokers.redis_control:RedisControlChannel",
    "rediss": "asyncq.brokers.redis_control:RedisControlChannel",
    "redis+cluster": "asyncq.brokers.redis_control:RedisControlChannel",
    "rediss+cluster": "asyncq.brokers.redis_control:RedisControlChannel",
    "redis+sentinel": "asyncq.brokers.redis_control:RedisControlChannel",
    "amqp": "asyncq.brokers.rabbitmq_control:RabbitMQControlChannel",
    "amqps": "asyncq.brokers.rabbitmq_control:RabbitMQControlChannel",
    "postgresql": "asyncq.brokers.postgres_control:PostgresControlChannel",
    "postgres": "asyncq.brokers.postgres_control:PostgresControlChannel",
}


#: Broker schemes whose product has no place for a control channel (a log, a plain queue
#: service): their control plane lives in the store named by the ``control_url`` setting.
NEEDS_CONTROL_URL: Final = frozenset({"sqs", "kafka"})


class _SeparateStore:
    """A control channel on a broker of its own (the ``control_url`` store), opened and closed with it."""

    def __init__(self, broker: Broker, channel: ControlChannel) -> None:
        self._broker = broker
        self._channel = channel

    async def connect(self) -> None:
        await self._broker.connect()
        await self._channel.connect()

    async def aclose(self) -> None:
        try:
            await self._channel.aclose()
        finally:
            await self._broker.aclose()

    def __getattr__(self, name: str) -> object:  # beat, workers, broadcast, ...: the channel's
        return getattr(self._channel, name)


def control_channel_for(
    broker: Broker, control_url: str | None = None, *, connect_timeout: float | None = None
) -> ControlChannel:
    """Build (not connect) the control channel of ``broker``, or of the store at ``control_url``.

    A driver outside asyncq offers one from its ``control_channel()`` method.
    """
    if control_url:
        store = broker_from_url(control_url, **with_connect_timeout(control_url, {}, connect_timeout))
        return cast("ControlChannel", _SeparateStore(store, control_channel_for(store)))
    own = broker.control_channel()
    if own is not None:
        return own
    scheme = urlsplit(broker.url).scheme
    path = CONTROL_CHANNELS.get(scheme)
    if path is None:
        hint = (
            "; set control_url to a redis://, postgresql:// or sqlite:// store for them"
            if scheme in NEEDS_CONTROL_URL
            else ""
        )
        raise ConfigurationError(
            f"the {scheme}:// broker has no control channel (inspect, control, revoke){hint}"
        )
    cls = import_string(path)
    channel: ControlChannel = cls(broker)
    return channel
