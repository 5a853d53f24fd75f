"""RabbitMQ broker over aio-pika: ``amqp://`` and ``amqps://``.

This module owns the AMQP topology asyncq uses and the rules that turn AMQP's primitives
into the :class:`~asyncq.brokers.base.Broker` contract. For a work queue ``Q``::

    exchange "asyncq" (direct; option ``exchange``) --routing key Q--> Q
    Q               durable; classic with x-max-priority 10, or quorum with x-delivery-limit
    Q.dead          dead-letter queue: ``dead_letter(reason)`` and quorum's delivery limit land here
    Q.delay.<n>     nine TTL queues (250 ms x 4**k, up to 16384 s) that dead-letter back into Q

Guarantees, in short (docs/brokers/rabbitmq.md has the long form):

* ``publish`` returns once the broker confirmed the message (publisher confirms), persistent
  on a durable queue; ``publish_many`` sends a window of messages, then awaits their confirms.
* A delivery is acked only when settled; a consumer whose channel or connection dies has its
  unsettled messages redelivered by the server. The channel's liveness is the lease, so the
  ``visibility_timeout`` option is accepted and ignored.
* Delayed messages (eta, ``nack(delay=...)``) wait in the delay queues, never unacked in a
  consumer: a message is put in the longest delay queue not longer than the time left; when
  it reaches Q early, the consumer moves it on into a shorter one (a "hop"). It is never
  delivered before its eta and usually within 250 ms after it.
* ``nack`` re-publishes the message (confirmed) with its delivery count in a header, then acks
  the original: the count survives. Until that ack is processed by the server no delivery is
  handed out, and a leftover original that comes back is dropped (``asyncq._amqp.CopyGuard``),
  so a copy that kills its worker does not fork the message.

Modules: :mod:`.wire` (options, headers, delay levels), :mod:`.topology` (connection and
declarations), :mod:`.publisher` (confirmed publishes and re-publishing settlements),
:mod:`.consumer` (deliveries and the consume iterator), :mod:`.lean_consumer` (the same
over asyncq's own AMQP connection, the default), :mod:`.dead_letters` and
:mod:`.broker` (the class). The AMQP plumbing shared with rpc:// is :mod:`asyncq._amqp`.

aio-pika is imported here and nowhere above the driver layer; its exceptions are translated
into :class:`~asyncq.exceptions.BrokerError` / :class:`~asyncq.exceptions.BrokerConnectionError`.
"""

from __future__ import annotations

from asyncq.exceptions import MissingDependencyError

try:
    import aio_pika  # noqa: F401 - checked first, for the one-line hint below
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError.for_extra("aio-pika", "amqp") from exc

from asyncq._amqp import translate_errors
from asyncq.brokers.rabbitmq.broker import RabbitMQBroker
from asyncq.brokers.rabbitmq.consumer import RabbitMQDelivery
from asyncq.brokers.rabbitmq.wire import BROKER_OPTIONS, DELAY_LEVELS_MS, MAX_PRIORITY, PUBLISH_WINDOW

__all__ = [
    "BROKER_OPTIONS",
    "DELAY_LEVELS_MS",
    "MAX_PRIORITY",
    "PUBLISH_WINDOW",
    "RabbitMQBroker",
    "RabbitMQDelivery",
    "translate_errors",
]
