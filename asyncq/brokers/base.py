"""The broker contract: what the worker and producers need from a message transport.

A broker moves opaque message bytes between queues. It knows nothing of tasks, serializers
or retries: those live above it, so each driver stays small. Every driver passes the shared
suite in tests/conformance/test_broker_contract.py.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from asyncq.brokers.control import ControlChannel

__all__ = [
    "Broker",
    "BrokerCapabilities",
    "BrokerDefaults",
    "DeadLetter",
    "Delivery",
    "OutgoingMessage",
]


@dataclass(frozen=True, slots=True)
class BrokerCapabilities:
    """What a driver can do natively; the conformance suite skips only on these.

    Attributes:
        durable: messages survive a restart of every asyncq process.
        redelivers_lost: a message taken by a consumer that dies is delivered again.
        notifies: a consumer wakes on publish without polling, also across processes.
        priorities: higher ``priority`` messages are delivered first within a queue.
        delayed_delivery: ``eta`` is honoured by the broker itself.
        fair_queuing: messages with a ``fair_key`` are served key by key in turn (weighted)
            within a queue and priority, instead of in publish order.
    """

    durable: bool = False
    redelivers_lost: bool = False
    notifies: bool = False
    priorities: bool = True
    delayed_delivery: bool = True
    fair_queuing: bool = False


@dataclass(slots=True)
class OutgoingMessage:
    """A message to publish.

    Attributes:
        id: the message (task) id, unique per publish.
        queue: the destination queue name.
        body: the encoded envelope; brokers never look inside.
        priority: 0 (default, lowest) to 9 (highest), or None for 0.
        eta: epoch seconds before which the message must not be delivered; None for now.
        fair_key: the tenant of a fair message (see ``BrokerCapabilities.fair_queuing``); None
            for a plain one. Brokers without fair queuing ignore it.
        fair_weight: the share of its key, 1 to 1000: a key of weight 3 is served 3 messages
            per turn.
    """

    id: str
    queue: str
    body: bytes
    priority: int | None = None
    eta: float | None = None
    fair_key: str | None = None
    fair_weight: int = 1


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message parked in a queue's dead-letter store, with why it was parked."""

    id: str
    queue: str
    body: bytes
    reason: str
    dead_lettered_at: float


@runtime_checkable
class Delivery(Protocol):
    """One delivered message, to be settled exactly once with ack, nack or dead_letter.

    Attributes:
        id: the message id given at publish.
        queue: the queue it came from.
        body: the bytes given at publish.
        delivery_count: how many times it has been delivered, this time included (1 first).
    """

    id: str
    queue: str
    body: bytes
    delivery_count: int

    async def ack(self) -> None:
        """Done with it: remove it for good."""

    async def nack(self, *, delay: float | None = None) -> None:
        """Return it to its queue, visible again now or after ``delay`` seconds."""

    async def dead_letter(self, reason: str) -> None:
        """Move it to its queue's dead-letter store, with ``reason``."""


@runtime_checkable
class Broker(Protocol):
    """A message transport, chosen by URL scheme (see asyncq.brokers.broker_from_url)."""

    url: str
    capabilities: BrokerCapabilities

    async def connect(self) -> None:
        """Open connections and create what is missing; idempotent."""

    async def aclose(self) -> None:
        """Release connections; unsettled deliveries are returned by the transport's own rules."""

    async def publish(self, message: OutgoingMessage) -> None:
        """Store one message durably (as durable as the driver is) before returning."""

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish several messages in as few round trips as the transport allows."""

    def consume(self, queues: Sequence[str], *, prefetch: int) -> AsyncGenerator[Delivery, None]:
        """Yield deliveries from ``queues`` forever; at most ``prefetch`` unsettled at a time.

        Earlier queues in the list are not preferred over later ones; within a queue, higher
        priority first, then publish order. Closing the iterator (``aclose``) stops consuming;
        deliveries already yielded stay valid until settled.
        """

    async def purge(self, queue: str) -> int:
        """Drop every waiting message of ``queue`` (not those in flight); return how many."""

    async def queue_length(self, queue: str) -> int:
        """Count the messages waiting in ``queue``, delayed ones included, in-flight ones not."""

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """Return up to ``limit`` dead-lettered messages of ``queue``, oldest first."""

    async def get_dead_letter(self, queue: str, message_id: str) -> DeadLetter | None:
        """Return the oldest dead letter of ``queue`` with this message id, or None."""

    async def requeue_dead_letter(self, queue: str, message_id: str) -> bool:
        """Move the oldest dead letter with this id back to ``queue`` as a fresh message.

        Its delivery count starts again at zero and it is ready at once. Returns False when
        there is no such dead letter.
        """

    async def requeue_dead_letters(self, queue: str) -> int:
        """Move every dead letter of ``queue`` back to it as fresh messages; return how many."""

    async def purge_dead_letters(self, queue: str) -> int:
        """Drop every dead letter of ``queue``; return how many."""

    # -- optional; BrokerDefaults has the default ------------------------------------------------

    def control_channel(self) -> ControlChannel | None:
        """The channel for presence, inspect, control and revoke, or None to use the registry.

        asyncq's own drivers are found in ``asyncq.brokers.control.CONTROL_CHANNELS`` by URL
        scheme; a driver outside asyncq returns its channel here (built, not connected).
        """

    async def active_fair_keys(self, queue: str) -> int:
        """Fair keys (tenants) of ``queue`` with messages waiting for their turn (stats, metrics)."""


class BrokerDefaults:
    """The optional methods of :class:`Broker` with their defaults: a driver inherits what it lacks."""

    def control_channel(self) -> ControlChannel | None:
        """None: the control channel is looked up by URL scheme."""
        return None

    async def active_fair_keys(self, queue: str) -> int:
        """0: a broker without fair queuing keeps no fair keys."""
        return 0
