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

aio-pika is imported here and nowhere above the driver layer; its exceptions are translated
into :class:`~asyncq.exceptions.BrokerError` / :class:`~asyncq.exceptions.BrokerConnectionError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncGenerator, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from asyncq._connect import DEFAULT_CONNECT_TIMEOUT, connect_timeout_value
from asyncq._utils import now, redact_url
from asyncq.brokers.base import BrokerCapabilities, BrokerDefaults, DeadLetter, Delivery, OutgoingMessage
from asyncq.exceptions import (
    AsyncqError,
    BrokerConnectionError,
    BrokerError,
    ConfigurationError,
    MissingDependencyError,
)

try:
    import aiormq
    from aio_pika.abc import (
        AbstractIncomingMessage,
        AbstractRobustChannel,
        AbstractRobustConnection,
        AbstractRobustQueue,
    )
    from aiormq.exceptions import ChannelInvalidStateError, ChannelPreconditionFailed, PublishError
    from pamqp.commands import Basic

    from asyncq._amqp import CopyGuard, ack_confirmed, close_robust, open_robust
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError.for_extra("aio-pika", "amqp") from exc

__all__ = ["RabbitMQBroker"]

log = logging.getLogger(__name__)

#: Query parameters understood by aio-pika / aiormq themselves; passed through untouched.
CLIENT_OPTIONS: Final = frozenset(
    {
        "heartbeat",
        "timeout",
        "name",
        "auth",
        "cafile",
        "capath",
        "cadata",
        "keyfile",
        "certfile",
        "no_verify_ssl",
        "reconnect_interval",
        "fail_fast",
    }
)

#: Options of this driver (URL query or keyword), with their defaults.
BROKER_OPTIONS: Final[Mapping[str, object]] = {
    "exchange": "asyncq",
    "exchange_type": "direct",
    "queue_type": "classic",
    "max_deliveries": 200,
    "publish_timeout": 30.0,
    "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
    "connection_name": "asyncq",
    "visibility_timeout": None,
}

#: Delay queue TTLs: 250 ms x 4**k. Nine queues cover 16384 s (4.5 h) per hop; longer delays
#: hop through the top queue again. Powers of four keep the queue count small while a delay
#: needs at most three hops per level (a one-hour countdown takes six).
DELAY_LEVELS_MS: Final = tuple(250 * 4**k for k in range(9))

#: The highest AMQP priority on classic queues. User priorities are 0-9; 10 is kept for hops,
#: so a message moving between delay queues passes the backlog of its work queue.
MAX_PRIORITY: Final = 10
_HOP_PRIORITY: Final = MAX_PRIORITY

#: How many publishes ``publish_many`` keeps awaiting confirms at once.
PUBLISH_WINDOW: Final = 2000

#: Dead letters one ``requeue_dead_letters`` round fetches, publishes and acks together.
_REQUEUE_WINDOW: Final = 200

#: Seconds between reconnection attempts unless the URL sets ``reconnect_interval``.
DEFAULT_RECONNECT_INTERVAL: Final = 1.0

#: Seconds before a message whose hop or redelivery bookkeeping failed is requeued.
BOOKKEEPING_RETRY_DELAY: Final = 1.0

# Headers asyncq writes. Times are integer milliseconds: AMQP field tables (as pamqp encodes
# Python floats) carry 32-bit floats, which would round an epoch to about two minutes.
H_ETA: Final = "x-asyncq-eta-ms"
H_DELIVERIES: Final = "x-asyncq-deliveries"  # deliveries before this copy was published
H_RETURNS: Final = "x-asyncq-returns"  # deliveries in a row whose consumer was lost (classic)
H_PRIORITY: Final = "x-asyncq-priority"  # the caller's priority while a hop uses _HOP_PRIORITY
H_QUEUE: Final = "x-asyncq-queue"
H_REASON: Final = "x-asyncq-reason"
H_DEAD_AT: Final = "x-asyncq-dead-at-ms"
H_COPY: Final = "x-asyncq-copy"  # a fresh id on every re-publish: names the incarnation (CopyGuard)

# Headers RabbitMQ adds when it dead-letters or redelivers; dropped when asyncq re-publishes
# so that a message hopping through delay queues for weeks does not grow without bound.
_SERVER_HEADERS: Final = frozenset(
    {"x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason", "x-delivery-count"}
)
_SERVER_HEADER_PREFIXES: Final = ("x-last-death-",)

_QUEUE_SUFFIX_ROOM: Final = len(".delay.16384s")


def redact(url: str) -> str:
    """The URL with its password replaced, for messages and logs."""
    return redact_url(url)


def split_amqp_url(
    url: str, options: Mapping[str, Any], own: Collection[str], kind: str
) -> tuple[str, dict[str, Any]]:
    """Split ``url`` and keyword ``options`` into the client's URL and asyncq's own options.

    Keyword options win over URL query parameters. Client-library parameters (heartbeat, TLS
    files, ...) stay in the returned URL; anything neither side knows is refused.

    Raises:
        ConfigurationError: not an amqp(s) URL, or an unknown option.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigurationError(f"{redact(url)!r} is not an amqp:// or amqps:// URL")
    merged: dict[str, Any] = dict(parse_qsl(parts.query, keep_blank_values=True))
    merged.update(options)
    unknown = sorted(set(merged) - set(own) - CLIENT_OPTIONS)
    if unknown:
        known = ", ".join(sorted({*own, *CLIENT_OPTIONS}))
        raise ConfigurationError(f"unknown {kind} option(s) {', '.join(unknown)}; known: {known}")
    client = {key: _query_value(value) for key, value in merged.items() if key in CLIENT_OPTIONS}
    client_url = urlunsplit(parts._replace(query=urlencode(client)))
    return client_url, {key: value for key, value in merged.items() if key in own}


def _with_query(url: str, **params: object) -> str:
    parts = urlsplit(url)
    query = [
        *parse_qsl(parts.query, keep_blank_values=True),
        *((k, _query_value(v)) for k, v in params.items()),
    ]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _query_value(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigurationError(f"option {name}={value!r} is invalid; expected one of: {', '.join(allowed)}")
    return str(value)


def _number(name: str, value: object, kind: type[int] | type[float], minimum: float) -> Any:
    try:
        number = kind(cast(Any, value))
    except (TypeError, ValueError):
        raise ConfigurationError(f"option {name}={value!r} is not a number") from None
    if number < minimum:
        raise ConfigurationError(f"option {name}={value!r} must be at least {minimum}")
    return number


@contextlib.contextmanager
def translate_errors(
    action: str,
    error: type[AsyncqError] = BrokerError,
    connection_error: type[AsyncqError] = BrokerConnectionError,
) -> Iterator[None]:
    """Re-raise aio-pika / aiormq failures inside the block as asyncq errors naming ``action``.

    ``error`` / ``connection_error`` are the classes to raise (the RPC backend passes the
    backend branch of the tree); asyncq's own errors pass through unchanged.
    """
    try:
        yield
    except AsyncqError:
        raise
    except ChannelPreconditionFailed as exc:
        raise error(
            f"{action}: {exc}; an existing queue or exchange was declared with other arguments "
            "(another queue_type, exchange_type or max_deliveries?): delete it or use the same options"
        ) from exc
    except (ChannelInvalidStateError, aiormq.exceptions.AMQPConnectionError, ConnectionError, OSError) as exc:
        raise connection_error(f"{action}: connection to RabbitMQ lost ({exc!r})") from exc
    except TimeoutError as exc:
        raise connection_error(f"{action}: RabbitMQ did not answer in time") from exc
    except (aiormq.exceptions.AMQPError, RuntimeError) as exc:
        # aiormq raises bare RuntimeError for "connection closed" states.
        raise error(f"{action}: {exc!r}") from exc


def _is_stale(message: AbstractIncomingMessage) -> bool:
    """Whether the channel that delivered ``message`` is gone (the server will redeliver it)."""
    try:
        message.channel  # noqa: B018 - the property raises once the channel is closed
    except ChannelInvalidStateError:
        return True
    return False


async def _ack(message: AbstractIncomingMessage) -> None:
    """basic.ack without waiting for the socket to drain.

    AMQP acks are never confirmed by the server, so waiting for the write buys nothing but a
    loop round trip per message; an ack lost with the connection means a redelivery either way.
    """
    if message.delivery_tag is None:
        return
    channel = cast(aiormq.Channel, message.channel)
    await channel.basic_ack(delivery_tag=message.delivery_tag, wait=False)


async def _requeue(message: AbstractIncomingMessage) -> None:
    """Hand an unsettled message back to its queue, if its channel still lives."""
    if _is_stale(message) or message.processed:
        return
    try:
        await message.reject(requeue=True)
    except Exception:  # best effort: a channel that dies requeues it anyway
        log.debug("could not requeue message %s", message.message_id, exc_info=True)


def _int_header(headers: Mapping[str, Any], name: str) -> int:
    value = headers.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _carried_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in headers.items()
        if key not in _SERVER_HEADERS and not key.startswith(_SERVER_HEADER_PREFIXES)
    }


def _level_name(queue: str, level_ms: int) -> str:
    label = f"{level_ms}ms" if level_ms < 1000 else f"{level_ms // 1000}s"
    return f"{queue}.delay.{label}"


def _pick_level(remaining_ms: int) -> tuple[int, bool]:
    """The delay queue for ``remaining_ms`` and whether it is the last hop.

    The longest level not longer than the time left, so a hop never overshoots; below the
    shortest level, the shortest one (the only place a message waits past its eta).
    """
    for level in reversed(DELAY_LEVELS_MS):
        if level <= remaining_ms:
            return level, level == remaining_ms
    return DELAY_LEVELS_MS[0], True


@dataclass(frozen=True, slots=True)
class _Route:
    """Where and how to publish one message."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Basic.Properties
    queue: str  # the work queue it belongs to, to re-declare on an unroutable return
    is_delayed: bool  # goes to a delay queue of ``queue``


class RabbitMQDelivery:
    """One message delivered from a RabbitMQ queue; settle it once with ack, nack or dead_letter."""

    __slots__ = ("_broker", "_message", "_on_settle", "body", "delivery_count", "id", "queue")

    def __init__(
        self,
        broker: RabbitMQBroker,
        message: AbstractIncomingMessage,
        queue: str,
        delivery_count: int,
        on_settle: Callable[[], None],
    ) -> None:
        self._broker, self._message, self._on_settle = broker, message, on_settle
        self.id = message.message_id or ""
        self.queue = queue
        self.body = message.body
        self.delivery_count = delivery_count

    def _settle(self) -> None:
        on_settle, self._on_settle = self._on_settle, _noop
        if on_settle is _noop:
            raise BrokerError(f"delivery {self.id} was already settled")
        on_settle()  # frees the iterator's prefetch slot whatever happens next

    async def ack(self) -> None:
        self._settle()
        if _is_stale(self._message):
            raise BrokerConnectionError(
                f"cannot ack message {self.id}: the channel that delivered it is gone, "
                "so RabbitMQ will deliver it again"
            )
        with translate_errors(f"ack message {self.id}"):
            await _ack(self._message)

    async def nack(self, *, delay: float | None = None) -> None:
        self._settle()
        headers = _carried_headers(self._message.headers)
        headers[H_DELIVERIES] = self.delivery_count
        headers.pop(H_RETURNS, None)  # settled: the run of lost deliveries is over
        headers.pop(H_ETA, None)
        priority = self._broker._priority_of(self._message)
        eta = now() + delay if delay is not None and delay > 0 else None
        route = self._broker._route(
            self.id, self.queue, self.body, priority, eta, headers, via_exchange=False
        )
        await self._broker._replace(self._message, route, f"nack message {self.id}")

    async def dead_letter(self, reason: str) -> None:
        self._settle()
        await self._broker._dead_letter(self._message, self.queue, reason)


def _noop() -> None:
    """Stands in for the settle callback once a delivery is settled."""


class _Consumer:
    """The state behind one ``consume()`` iterator: its channel, buffer and unsettled count.

    The server pushes at most ``prefetch`` unacked messages per consumer (per channel when
    several classic queues are consumed: global QoS). Quorum queues refuse global QoS, so with
    several quorum queues the server may push ``prefetch`` per queue; the buffer then holds the
    surplus and the iterator still yields at most ``prefetch`` unsettled deliveries.
    """

    def __init__(self, broker: RabbitMQBroker, queues: Sequence[str], prefetch: int) -> None:
        self._broker = broker
        self._queues = list(dict.fromkeys(queues))
        self._prefetch = prefetch
        self._buffer: asyncio.Queue[tuple[str, AbstractIncomingMessage] | None] = asyncio.Queue()
        self._unsettled = 0
        self._slot_free = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._channel: AbstractRobustChannel | None = None
        self._subscriptions: list[tuple[AbstractRobustQueue, str]] = []
        self._closing = False
        self._broker_closed = False

    async def start(self) -> None:
        broker = self._broker
        connection = await broker._ready()
        with translate_errors(f"consume from {', '.join(self._queues)}"):
            channel = await connection.channel(publisher_confirms=False)
            self._channel = channel
            is_classic = broker.queue_type == "classic"
            await channel.set_qos(
                # prefetch-count is a 16-bit field; above that the iterator's own count bounds it.
                prefetch_count=min(self._prefetch, 65535),
                global_=is_classic and len(self._queues) > 1,
            )
            for name in self._queues:
                # Declared on this channel as "robust": aio-pika re-declares the queue and
                # resumes the consumer (same tag, same callback) after a reconnect.
                queue = await channel.declare_queue(
                    name, durable=True, arguments=broker._work_arguments(name)
                )
                tag = await queue.consume(functools.partial(self._on_message, name))
                self._subscriptions.append((queue, tag))

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_message(self, queue: str, message: AbstractIncomingMessage) -> None:
        # aio-pika runs this in a task per delivery, started in delivery order; it must not
        # await before putting the message in the buffer, or deliveries could be reordered.
        if self._closing:
            self._spawn(_requeue(message), "asyncq.rabbitmq.requeue")
            return
        broker = self._broker
        if message.redelivered and broker._copies.was_copied(CopyGuard.incarnation(message, H_COPY)):
            self._spawn(broker._drop_leftover(message), "asyncq.rabbitmq.drop-leftover")
            return
        headers = message.headers
        eta_ms = _int_header(headers, H_ETA)
        if eta_ms and eta_ms > now() * 1000:
            self._spawn(self._broker._hop(message, queue), "asyncq.rabbitmq.hop")
            return
        if message.redelivered and self._broker.queue_type == "classic":
            self._spawn(self._broker._count_lost(message, queue), "asyncq.rabbitmq.count-lost")
            return
        self._buffer.put_nowait((queue, message))

    def _on_settle(self) -> None:
        self._unsettled -= 1
        self._slot_free.set()
        if self._closing and self._unsettled == 0:
            self._spawn(self._close_channel(), "asyncq.rabbitmq.close-consumer")

    def _delivery_count(self, message: AbstractIncomingMessage) -> int:
        headers = message.headers
        count = _int_header(headers, H_DELIVERIES) + 1
        if message.redelivered:
            # Quorum queues count returns themselves; the header is only trustworthy on a
            # redelivery (a first delivery keeps whatever header the publisher sent).
            count += max(1, _int_header(headers, "x-delivery-count"))
        return count

    async def next(self) -> Delivery:
        while True:
            while self._unsettled >= self._prefetch and not self._broker_closed:
                self._slot_free.clear()
                await self._slot_free.wait()
            item = None if self._broker_closed else await self._buffer.get()
            if item is None:
                raise BrokerConnectionError("the RabbitMQ broker was closed while consuming")
            queue, message = item
            # Not while a re-publish's original is unacked: see CopyGuard.
            await self._broker._copies.wait_idle()
            if _is_stale(message):
                continue  # delivered on a channel that died since: the server redelivers it
            self._unsettled += 1
            return RabbitMQDelivery(
                self._broker, message, queue, self._delivery_count(message), self._on_settle
            )

    def wake_closed(self) -> None:
        """The broker is closing: make a waiting ``next()`` raise instead of hanging."""
        self._broker_closed = True
        self._buffer.put_nowait(None)
        self._slot_free.set()

    async def stop(self) -> None:
        """Stop consuming; return buffered messages; close the channel once all are settled."""
        self._closing = True
        if self._broker_closed:
            return
        for queue, tag in self._subscriptions:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        while not self._buffer.empty():
            item = self._buffer.get_nowait()
            if item is not None:
                await _requeue(item[1])
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._unsettled == 0:
            await self._close_channel()
        # Otherwise the last settle closes it: yielded deliveries stay valid until settled.

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        self._broker._consumers.discard(self)
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()


class RabbitMQBroker(BrokerDefaults):
    """``amqp://`` / ``amqps://``: RabbitMQ through aio-pika, with a robust connection.

    Options (keyword or URL query; keywords win):

    * ``exchange`` ("asyncq"): the exchange messages are published to; "" uses the default
      exchange (routing key = queue name, no bindings).
    * ``exchange_type`` ("direct"): "direct" or "topic". Each queue is bound with its own name;
      with "topic" you may add wildcard bindings of your own.
    * ``queue_type`` ("classic"): "classic" (priorities 0-9, x-max-priority 10) or "quorum"
      (replicated; no priorities in this driver's contract).
    * ``max_deliveries`` (200): a message delivered this many times in a row to consumers that
      died (or closed) without settling it is moved to ``<queue>.dead``. Quorum queues enforce
      it in the server (x-delivery-limit = max_deliveries - 1); on classic queues the next
      consumer enforces it. Retries (``nack``) reset the run. It is a backstop above the
      worker's own poison rule (worker_max_deliveries isolated crashes, or 20 x that many
      deliveries): a limit counted by the transport also counts the deaths a healthy message
      only witnessed, so it must not be the one that decides.
    * ``publish_timeout`` (30.0 s): how long a publish waits for the broker's confirm, reconnects
      included, before raising BrokerConnectionError.
    * ``connect_timeout`` (10.0 s; the App passes ``broker_connection_timeout``): how long the
      first connect, AMQP handshake included, may take before BrokerConnectionError names
      the address and what answered there.
    * ``connection_name`` ("asyncq"): shown in the management UI and ``rabbitmqctl``.
    * ``visibility_timeout``: accepted and ignored; an AMQP delivery is held for as long as the
      consumer's channel lives (see RabbitMQ's ``consumer_timeout``).
    * Client options passed through to aio-pika: ``heartbeat`` (60 s), ``timeout``,
      ``reconnect_interval`` (1.0 s here; aio-pika's own default is 5), ``name``, ``auth``,
      ``cafile``, ``capath``, ``cadata``, ``keyfile``, ``certfile``, ``no_verify_ssl``, ``fail_fast``.

    Attributes:
        server_version: RabbitMQ's version string, known after ``connect()``.
    """

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        client_url, own = split_amqp_url(url, options, BROKER_OPTIONS, "amqp broker")
        settings = {**BROKER_OPTIONS, **own}
        if "reconnect_interval" not in urlsplit(client_url).query:
            # aio-pika waits 5 s between attempts; a worker should be back sooner.
            client_url = _with_query(client_url, reconnect_interval=DEFAULT_RECONNECT_INTERVAL)
        self._client_url = client_url
        self.exchange = str(settings["exchange"])
        self.exchange_type = _choice("exchange_type", settings["exchange_type"], ("direct", "topic"))
        self.queue_type = _choice("queue_type", settings["queue_type"], ("classic", "quorum"))
        self.max_deliveries: int = _number("max_deliveries", settings["max_deliveries"], int, 1)
        self.publish_timeout: float = _number("publish_timeout", settings["publish_timeout"], float, 0.001)
        self.connect_timeout = connect_timeout_value(settings["connect_timeout"])
        self.connection_name = str(settings["connection_name"])
        if self.exchange.startswith("amq."):
            raise ConfigurationError(f"exchange={self.exchange!r}: names starting with 'amq.' are reserved")
        self.capabilities = BrokerCapabilities(
            durable=True,
            redelivers_lost=True,
            notifies=True,
            # Quorum queues have no priorities before RabbitMQ 4.0 and two levels after:
            # not the 0-9 ordering the contract asks for.
            priorities=self.queue_type == "classic",
            delayed_delivery=True,
        )
        self.server_version: str | None = None
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._admin_channel: AbstractRobustChannel | None = None
        self._connect_lock = asyncio.Lock()
        self._declare_lock = asyncio.Lock()
        self._declared: set[str] = set()  # work queues (with Q.dead) declared on this connection
        self._delay_declared: set[str] = set()  # work queues whose delay queues are declared
        self._consumers: set[_Consumer] = set()
        self._copies = CopyGuard()

    # -- connection ----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the robust connection, its publish and admin channels, and the exchange."""
        await self._ready()

    async def _ready(self) -> AbstractRobustConnection:
        connection = self._connection
        if connection is not None and not connection.is_closed:
            return connection
        async with self._connect_lock:
            if self._connection is not None and not self._connection.is_closed:
                return self._connection
            connection = await open_robust(
                self._client_url,
                self.url,
                connection_name=self.connection_name,
                timeout=self.connect_timeout,
                error=BrokerConnectionError,
            )
            try:
                with translate_errors("open channels and declare the exchange"):
                    async with asyncio.timeout(self.connect_timeout):
                        self._publish_channel = await connection.channel(
                            publisher_confirms=True, on_return_raises=True
                        )
                        self._admin_channel = await connection.channel(publisher_confirms=False)
                        if self.exchange:
                            await self._admin_channel.declare_exchange(
                                self.exchange, type=self.exchange_type, durable=True
                            )
            except BaseException:
                await close_robust(connection)
                raise
            version = (
                connection.transport.connection.server_properties.get("version")
                if connection.transport
                else None
            )
            self.server_version = (
                version.decode() if isinstance(version, bytes) else cast(str | None, version)
            )
            connection.close_callbacks.add(self._on_connection_lost)
            connection.reconnect_callbacks.add(self._on_reconnected)
            self._connection = connection
            return connection

    def _on_connection_lost(self, _sender: object, exc: BaseException | None = None) -> None:
        if self._connection is not None and not self._connection.close_called:
            log.warning("connection to RabbitMQ at %s lost (%r); reconnecting", redact(self.url), exc)

    def _on_reconnected(self, _sender: object) -> None:
        # The server may have lost non-durable state (or been reset): declare again lazily.
        self._declared.clear()
        self._delay_declared.clear()
        log.info("reconnected to RabbitMQ at %s; consumers resumed", redact(self.url))

    async def aclose(self) -> None:
        """Close the connection; unsettled deliveries go back to their queues (server rule)."""
        connection, self._connection = self._connection, None
        for consumer in list(self._consumers):
            consumer.wake_closed()
        self._consumers.clear()
        self._declared.clear()
        self._delay_declared.clear()
        if connection is not None:
            await close_robust(connection)

    # -- topology ------------------------------------------------------------------------------

    def _check_queue(self, queue: str) -> None:
        if not queue or queue.startswith("amq.") or len(queue.encode()) > 255 - _QUEUE_SUFFIX_ROOM:
            raise BrokerError(
                f"queue name {queue!r} is not usable: it must be non-empty, not start with 'amq.', "
                f"and leave room for asyncq's suffixes (at most {255 - _QUEUE_SUFFIX_ROOM} bytes)"
            )

    def _type_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": self.queue_type}

    def _work_arguments(self, queue: str) -> dict[str, Any]:
        arguments = {
            **self._type_arguments(),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{queue}.dead",
        }
        if self.queue_type == "quorum":
            arguments["x-delivery-limit"] = self.max_deliveries - 1
        else:
            arguments["x-max-priority"] = MAX_PRIORITY
        return arguments

    def _delay_arguments(self, queue: str, level_ms: int) -> dict[str, Any]:
        arguments = {
            **self._type_arguments(),
            "x-message-ttl": level_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue,
        }
        if self.queue_type == "quorum":
            # Quorum queues can dead-letter at-least-once (confirmed by the target), which
            # needs reject-publish overflow; classic queues dead-letter at-most-once.
            arguments["x-dead-letter-strategy"] = "at-least-once"
            arguments["x-overflow"] = "reject-publish"
        return arguments

    async def _admin(self) -> AbstractRobustChannel:
        await self._ready()
        channel = self._admin_channel
        assert channel is not None
        try:
            # During an outage, fail like a publish would rather than hang an inspection.
            async with asyncio.timeout(self.publish_timeout):
                await channel.ready()
        except TimeoutError:
            raise BrokerConnectionError(
                f"RabbitMQ at {redact(self.url)} unreachable for publish_timeout={self.publish_timeout}s"
            ) from None
        return channel

    async def _declare(self, queue: str) -> None:
        """Declare ``queue``, its dead-letter queue and its binding, once per connection."""
        if queue in self._declared:
            return
        self._check_queue(queue)
        async with self._declare_lock:
            if queue in self._declared:
                return
            channel = await self._admin()
            with translate_errors(f"declare queue {queue!r}"):
                await channel.declare_queue(
                    f"{queue}.dead", durable=True, arguments=self._type_arguments(), robust=False
                )
                declared = await channel.declare_queue(
                    queue, durable=True, arguments=self._work_arguments(queue), robust=False
                )
                if self.exchange:
                    await declared.bind(self.exchange, routing_key=queue, robust=False)
            self._declared.add(queue)

    async def _declare_delays(self, queue: str) -> None:
        """Declare the delay queues of ``queue``, once per connection."""
        await self._declare(queue)
        if queue in self._delay_declared:
            return
        async with self._declare_lock:
            if queue in self._delay_declared:
                return
            channel = await self._admin()
            with translate_errors(f"declare the delay queues of {queue!r}"):
                for level in DELAY_LEVELS_MS:
                    await channel.declare_queue(
                        _level_name(queue, level),
                        durable=True,
                        arguments=self._delay_arguments(queue, level),
                        robust=False,
                    )
            self._delay_declared.add(queue)

    async def delete_queue(self, queue: str) -> None:
        """Delete ``queue`` with its delay and dead-letter queues, messages included.

        Driver-specific (not part of the Broker protocol): for tests and operations.
        """
        self._check_queue(queue)
        channel = await self._admin()
        names = [queue, f"{queue}.dead", *(_level_name(queue, level) for level in DELAY_LEVELS_MS)]
        with translate_errors(f"delete queue {queue!r}"):
            for name in names:
                await channel.queue_delete(name, if_unused=False, if_empty=False)
        self._declared.discard(queue)
        self._delay_declared.discard(queue)

    # -- publishing ----------------------------------------------------------------------------

    def _priority_of(self, message: AbstractIncomingMessage) -> int:
        original = message.headers.get(H_PRIORITY)
        if isinstance(original, int) and not isinstance(original, bool):
            return original
        return message.priority or 0

    def _route(
        self,
        message_id: str,
        queue: str,
        body: bytes,
        priority: int | None,
        eta: float | None,
        headers: dict[str, Any],
        *,
        via_exchange: bool,
    ) -> _Route:
        """Decide where a message goes now: its queue, or the right delay queue for its eta.

        ``via_exchange`` is True for first publishes (routed by the exchange) and False for
        re-publishes, which go straight back to the queue they came from.
        """
        priority = max(0, min(9, priority or 0))
        remaining_ms = 0 if eta is None else int(eta * 1000) - int(now() * 1000)
        if remaining_ms > 0:
            eta_ms = int(eta * 1000) if eta is not None else 0
            level, is_last = _pick_level(remaining_ms)
            headers = {**headers, H_ETA: eta_ms, H_PRIORITY: priority}
            return _Route(
                "",
                _level_name(queue, level),
                body,
                self._properties(message_id, priority if is_last else _HOP_PRIORITY, headers),
                queue,
                is_delayed=True,
            )
        headers.pop(H_ETA, None)
        headers.pop(H_PRIORITY, None)
        if via_exchange and self.exchange:
            return _Route(
                self.exchange, queue, body, self._properties(message_id, priority, headers), queue, False
            )
        return _Route("", queue, body, self._properties(message_id, priority, headers), queue, False)

    def _properties(self, message_id: str, priority: int, headers: dict[str, Any]) -> Basic.Properties:
        return Basic.Properties(
            message_id=message_id,
            delivery_mode=2,  # persistent
            priority=priority,
            headers=headers or None,
        )

    async def _prepare(self, route: _Route) -> None:
        """Declare what ``route`` needs, riding out a connection drop as a publish does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        while True:
            try:
                if route.is_delayed:
                    await self._declare_delays(route.queue)
                else:
                    await self._declare(route.queue)
                return
            except BrokerConnectionError:
                if self._connection is None or loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.05)  # let the robust connection notice the loss and restore

    async def _send(self, route: _Route, action: str) -> None:
        """Publish one message and wait for the broker's confirm, riding out a reconnect.

        A publish whose confirm was lost with the connection is sent again: RabbitMQ may then
        hold it twice, which at-least-once delivery allows; it is never silently dropped.
        """
        with translate_errors(action):
            await self._send_until_confirmed(route, action)

    async def _send_until_confirmed(self, route: _Route, action: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        redeclared = False
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._ready()
                    channel = self._publish_channel
                    assert channel is not None
                    await channel.ready()
                    # The concrete aiormq channel: wait=False queues the frames without waiting
                    # for the socket to drain under the channel lock, so a window pipelines.
                    underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
                    await underlay.basic_publish(
                        route.body,
                        exchange=route.exchange,
                        routing_key=route.routing_key,
                        properties=route.properties,
                        mandatory=True,
                        wait=False,
                    )
                return
            except PublishError as exc:
                # Returned unroutable: the queue or binding vanished (deleted by hand, node
                # reset). Declare again once, then give up loudly rather than drop it.
                if redeclared:
                    raise BrokerError(
                        f"{action}: RabbitMQ could not route it to {route.routing_key!r}"
                    ) from exc
                redeclared = True
                self._declared.discard(route.queue)
                self._delay_declared.discard(route.queue)
                await self._prepare(route)
            except TimeoutError as exc:
                raise BrokerConnectionError(
                    f"{action}: not confirmed by RabbitMQ within publish_timeout={self.publish_timeout}s"
                ) from exc
            except aiormq.exceptions.DeliveryError as exc:
                raise BrokerError(f"{action}: RabbitMQ refused the message ({exc!r})") from exc
            except (
                ChannelInvalidStateError,
                aiormq.exceptions.AMQPConnectionError,
                aiormq.exceptions.ChannelClosed,
                ConnectionError,
            ):
                if self._connection is None:
                    raise BrokerConnectionError(f"{action}: the broker was closed") from None
                log.debug("%s: channel lost mid-publish; sending again after the reconnect", action)
                await asyncio.sleep(0.05)  # let the robust connection notice and start restoring

    async def publish(self, message: OutgoingMessage) -> None:
        """Publish one message; return once RabbitMQ confirmed it."""
        route = self._route(
            message.id, message.queue, message.body, message.priority, message.eta, {}, via_exchange=True
        )
        await self._prepare(route)
        await self._send(route, f"publish message {message.id}")

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish all, then await all confirms (in windows of PUBLISH_WINDOW).

        If some fail, the others may still be stored: the error says how many failed.
        """
        if not messages:
            return
        routes = [
            self._route(m.id, m.queue, m.body, m.priority, m.eta, {}, via_exchange=True) for m in messages
        ]
        for route in {(r.queue, r.is_delayed): r for r in routes}.values():
            await self._prepare(route)
        loop = asyncio.get_running_loop()
        for start in range(0, len(routes), PUBLISH_WINDOW):
            window = routes[start : start + PUBLISH_WINDOW]
            # Tasks start in order and each writes its frames before its first real await,
            # so the broker receives the window in order; only the confirms are awaited
            # concurrently.
            tasks = [
                loop.create_task(self._send(route, "publish_many"), name="asyncq.rabbitmq.publish")
                for route in window
            ]
            results = await asyncio.gather(*tasks, return_exceptions=True)
            errors = [result for result in results if isinstance(result, BaseException)]
            if errors:
                error = BrokerConnectionError if isinstance(errors[0], BrokerConnectionError) else BrokerError
                raise error(
                    f"publish_many: {len(errors)} of {len(messages)} messages were not confirmed "
                    f"(the first {start} were): {errors[0]}"
                ) from errors[0]

    async def _replace(
        self, message: AbstractIncomingMessage, route: _Route, action: str, *, requeue_on_failure: bool = True
    ) -> None:
        """Settle ``message`` by publishing ``route`` (confirmed), then acking the original.

        In that order a crash in between leaves two copies, never none. If the publish fails,
        the original is handed back to its queue so it does not sit unacked on a live channel.
        """
        if _is_stale(message):
            raise BrokerConnectionError(
                f"cannot {action}: the channel that delivered it is gone, so RabbitMQ will deliver it again"
            )
        headers = dict(route.properties.headers or {})
        headers[H_COPY] = uuid.uuid4().hex
        route.properties.headers = headers
        copies = self._copies
        token = copies.begin()
        try:
            try:
                await self._prepare(route)
                if _is_stale(message):
                    # Lost while declaring: the server redelivers the original, so sending
                    # the copy now would make two.
                    raise BrokerConnectionError(f"cannot {action}: the channel that delivered it is gone")
                await self._send(route, action)
            except BaseException:
                if requeue_on_failure:
                    await _requeue(message)
                raise
            copies.copied(CopyGuard.incarnation(message, H_COPY))
            with translate_errors(action):
                await ack_confirmed(message, self.publish_timeout)
        finally:
            copies.end(token)

    async def _drop_leftover(self, message: AbstractIncomingMessage) -> None:
        """Ack an original that came back although its copy was sent (its ack was lost)."""
        log.info("message %s was already re-published; dropping the redelivered original", message.message_id)
        try:
            with translate_errors(f"drop message {message.message_id}"):
                await ack_confirmed(message, self.publish_timeout)
        except BrokerError as exc:  # the next redelivery tries again
            log.debug("%s", exc)

    async def _dead_letter(
        self, message: AbstractIncomingMessage, queue: str, reason: str, *, requeue_on_failure: bool = True
    ) -> None:
        headers = _carried_headers(message.headers)
        headers.update({H_QUEUE: queue, H_REASON: reason, H_DEAD_AT: int(now() * 1000)})
        headers.pop(H_ETA, None)
        message_id = message.message_id or ""
        properties = self._properties(message_id, self._priority_of(message), headers)
        route = _Route("", f"{queue}.dead", message.body, properties, queue, False)
        await self._replace(
            message, route, f"dead-letter message {message_id}", requeue_on_failure=requeue_on_failure
        )

    async def _hop(self, message: AbstractIncomingMessage, queue: str) -> None:
        """Move a message that reached its queue before its eta into the next delay queue."""
        headers = _carried_headers(message.headers)
        eta = _int_header(headers, H_ETA) / 1000
        route = self._route(
            message.message_id or "",
            queue,
            message.body,
            self._priority_of(message),
            eta,
            headers,
            via_exchange=False,
        )
        await self._background(message, self._replace(message, route, "delay", requeue_on_failure=False))

    async def _count_lost(self, message: AbstractIncomingMessage, queue: str) -> None:
        """Record a classic-queue redelivery in the message's headers, or park it as poison.

        Classic queues only flag a redelivery; re-publishing with the counters incremented
        makes ``delivery_count`` exact and lets ``max_deliveries`` stop crash loops (the copy
        goes to the back of the queue).
        """
        headers = _carried_headers(message.headers)
        lost = _int_header(headers, H_RETURNS) + 1
        if lost >= self.max_deliveries:
            reason = (
                f"delivered {lost} times in a row to consumers that were lost before settling it "
                f"(max_deliveries={self.max_deliveries})"
            )
            await self._background(
                message, self._dead_letter(message, queue, reason, requeue_on_failure=False)
            )
            return
        headers[H_DELIVERIES] = _int_header(headers, H_DELIVERIES) + 1
        headers[H_RETURNS] = lost
        route = self._route(
            message.message_id or "",
            queue,
            message.body,
            self._priority_of(message),
            None,
            headers,
            via_exchange=False,
        )
        await self._background(message, self._replace(message, route, "count", requeue_on_failure=False))

    async def _background(self, message: AbstractIncomingMessage, work: Any) -> None:
        # Hops and redelivery bookkeeping run off the iterator, so a failure is logged, not
        # raised; the message goes back to its queue after a pause, which keeps a lasting
        # fault (say, a delay queue declared with other arguments) from spinning.
        try:
            await work
        except Exception as exc:  # see above
            if self._connection is None:
                return  # closing: the server requeues whatever is unacked
            log.warning("RabbitMQ bookkeeping of message %s failed; requeued: %s", message.message_id, exc)
            await asyncio.sleep(BOOKKEEPING_RETRY_DELAY)
            await _requeue(message)

    # -- consuming -----------------------------------------------------------------------------

    async def consume(
        self, queues: Sequence[str], *, prefetch: int
    ) -> AsyncGenerator[Delivery, None]:
        """Yield deliveries from ``queues``; at most ``prefetch`` unsettled (basic.qos)."""
        if not queues:
            raise ConfigurationError("consume() needs at least one queue")
        if prefetch < 1:
            raise ConfigurationError(f"prefetch={prefetch!r} must be at least 1")
        for queue in queues:
            await self._declare(queue)
        consumer = _Consumer(self, queues, prefetch)
        self._consumers.add(consumer)
        try:
            await consumer.start()
            while True:
                yield await consumer.next()
        finally:
            await consumer.stop()

    # -- inspection ----------------------------------------------------------------------------

    async def _counts(self, queue: str, *, purge: bool) -> int:
        # queue.declare answers with the count of ready messages, so re-declaring (idempotent)
        # counts without the management plugin. Delay queues have no consumers: all ready.
        await self._declare_delays(queue)
        channel = await self._admin()
        queues = [(queue, self._work_arguments(queue))]
        queues += [
            (_level_name(queue, level), self._delay_arguments(queue, level)) for level in DELAY_LEVELS_MS
        ]
        total = 0
        with translate_errors(f"{'purge' if purge else 'count'} queue {queue!r}"):
            for name, arguments in queues:
                declared = await channel.declare_queue(name, durable=True, arguments=arguments, robust=False)
                if purge:
                    total += (await declared.purge()).message_count or 0
                else:
                    total += declared.declaration_result.message_count or 0
        return total

    async def purge(self, queue: str) -> int:
        """Drop the ready and delayed messages of ``queue`` (not in-flight or dead ones)."""
        return await self._counts(queue, purge=True)

    async def queue_length(self, queue: str) -> int:
        """Ready messages of ``queue`` plus those waiting in its delay queues."""
        return await self._counts(queue, purge=False)

    async def dead_letters(self, queue: str, *, limit: int = 100) -> list[DeadLetter]:
        """Read up to ``limit`` messages of ``<queue>.dead``, oldest first, leaving them there.

        They are fetched with basic.get on a private channel which is then closed, so RabbitMQ
        puts them back in their places. Two readers at once may each see only part.
        """
        await self._declare(queue)
        connection = await self._ready()
        found: list[DeadLetter] = []
        with translate_errors(f"read the dead letters of {queue!r}"):
            channel = await connection.channel(publisher_confirms=False)
            try:
                dead = await channel.declare_queue(
                    f"{queue}.dead", durable=True, arguments=self._type_arguments(), robust=False
                )
                while len(found) < limit:
                    message = await dead.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    found.append(_dead_letter_of(message, queue))
            finally:
                await channel.close()
        return found

    # -- dead-letter administration ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _dead_queue(self, queue: str, action: str) -> AsyncGenerator[AbstractRobustQueue, None]:
        """``<queue>.dead`` on a private channel; what it fetched and did not ack goes back on close."""
        await self._declare(queue)
        connection = await self._ready()
        with translate_errors(action):
            async with asyncio.timeout(self.publish_timeout):
                channel = await connection.channel(publisher_confirms=False)
            try:
                async with asyncio.timeout(self.publish_timeout):
                    dead = await channel.declare_queue(
                        f"{queue}.dead", durable=True, arguments=self._type_arguments(), robust=False
                    )
                yield dead  # each basic.get in the caller has aio-pika's own deadline (5 s)
            finally:
                await channel.close()

    async def get_dead_letter(self, queue: str, message_id: str) -> DeadLetter | None:
        """The oldest message of ``<queue>.dead`` with this id (read and left there), or None."""
        async with self._dead_queue(queue, f"find dead letter {message_id!r} of {queue!r}") as dead:
            while (message := await dead.get(no_ack=False, fail=False)) is not None:
                if message.message_id == message_id:
                    return _dead_letter_of(message, queue)
        return None

    async def requeue_dead_letter(self, queue: str, message_id: str) -> bool:
        """Publish the oldest dead letter with this id to its queue afresh (confirmed), then ack it."""
        async with self._dead_queue(queue, f"requeue dead letter {message_id!r} of {queue!r}") as dead:
            while (message := await dead.get(no_ack=False, fail=False)) is not None:
                if message.message_id == message_id:
                    await self._send_again(message, queue)
                    await message.ack()
                    return True
        return False

    async def requeue_dead_letters(self, queue: str) -> int:
        """Requeue the messages ``<queue>.dead`` holds now, a window at a time; return how many."""
        moved = 0
        async with self._dead_queue(queue, f"requeue the dead letters of {queue!r}") as dead:
            # Only those there at the start: a task dead-lettered again meanwhile stays dead.
            remaining = dead.declaration_result.message_count or 0
            while moved < remaining:
                window: list[AbstractIncomingMessage] = []
                while len(window) < min(_REQUEUE_WINDOW, remaining - moved):
                    message = await dead.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    window.append(message)
                if not window:
                    break
                sent = await asyncio.gather(
                    *(self._send_again(message, queue) for message in window), return_exceptions=True
                )
                for message, outcome in zip(window, sent, strict=True):
                    if not isinstance(outcome, BaseException):
                        await message.ack()  # a failed one stays dead: it goes back on close
                        moved += 1
                errors = [outcome for outcome in sent if isinstance(outcome, BaseException)]
                if errors:
                    raise errors[0]
        return moved

    async def _send_again(self, message: AbstractIncomingMessage, queue: str) -> None:
        """Publish a dead letter to its work queue as a new message: no eta, no delivery counts."""
        headers = _carried_headers(message.headers)
        priority = self._priority_of(message)
        origin = headers.get(H_QUEUE)
        for name in (H_QUEUE, H_REASON, H_DEAD_AT, H_DELIVERIES, H_RETURNS, H_ETA, H_PRIORITY):
            headers.pop(name, None)
        target = origin if isinstance(origin, str) else queue
        message_id = message.message_id or ""
        route = self._route(message_id, target, message.body, priority, None, headers, via_exchange=False)
        await self._prepare(route)
        await self._send(route, f"requeue dead letter {message_id}")

    async def purge_dead_letters(self, queue: str) -> int:
        """Drop every message of ``<queue>.dead``; return how many."""
        await self._declare(queue)
        channel = await self._admin()
        with translate_errors(f"purge the dead letters of {queue!r}"):
            dead = await channel.declare_queue(
                f"{queue}.dead", durable=True, arguments=self._type_arguments(), robust=False
            )
            return (await dead.purge()).message_count or 0


def _dead_letter_of(message: AbstractIncomingMessage, queue: str) -> DeadLetter:
    headers = message.headers
    reason = headers.get(H_REASON)
    dead_at_ms = _int_header(headers, H_DEAD_AT)
    dead_at = dead_at_ms / 1000 if dead_at_ms else None
    if not isinstance(reason, str):
        # Dead-lettered by RabbitMQ itself (quorum delivery limit, a reject by another tool).
        deaths = headers.get("x-death")
        death = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
        cause = death.get("reason", "unknown")
        cause = cause.decode() if isinstance(cause, bytes) else str(cause)
        reason = (
            "delivered max_deliveries times to consumers that were lost before settling it (delivery_limit)"
            if cause == "delivery_limit"
            else f"dead-lettered by RabbitMQ ({cause})"
        )
        when = death.get("time")
        if isinstance(when, datetime):
            dead_at = when.timestamp()
    origin = headers.get(H_QUEUE)
    return DeadLetter(
        id=message.message_id or "",
        queue=origin if isinstance(origin, str) else queue,
        body=message.body,
        reason=reason,
        dead_lettered_at=dead_at if dead_at is not None else now(),
    )
