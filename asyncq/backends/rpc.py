"""RPC result backend: ``rpc://``, records sent straight back to the caller over RabbitMQ.

There is no result store. Every backend instance has one exclusive reply queue, bound once
to the direct exchange ``asyncq.rpc`` with its own name as binding key: its reply address.
The App writes that address into each task message it sends (the ``reply_to`` header, see
:meth:`RPCBackend.reply_address`), and the worker's :meth:`RPCBackend.set_reply` publishes
the record to the exchange with routing key = task id and the address in the ``CC`` header
(RabbitMQ's sender-selected distribution): one publish reaches the caller without a binding
per task, and any process that bound the task id itself (``get`` / ``wait`` on an id it did
not send) receives it as well. A record published while nobody listens is dropped.

Limits (see docs/backends/rpc.md): only the process that sent the task (or bound its id) can
read its result; records live in that process's memory (bounded by ``cache_size``); nothing
survives a restart; ``incr`` is impossible, so chords need another backend.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, cast
from urllib.parse import parse_qsl, urlsplit

from asyncq._connect import DEFAULT_CONNECT_TIMEOUT
from asyncq._options import Option, integer, optional, parse_options, seconds, text
from asyncq._sending import Arrival
from asyncq._utils import now, redact_url
from asyncq.backends.base import BackendCapabilities, BackendDefaults
from asyncq.exceptions import (
    BackendConnectionError,
    BackendError,
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
    from pamqp.commands import Basic

    from asyncq._amqp import client_url, close_robust, open_robust, translate_errors
    from asyncq._amqp.connection import connect_error
    from asyncq._amqp.protocol import LeanMessage, LeanParams
    from asyncq._amqp.publisher import LeanPublisher
    from asyncq._amqp.publishing import publish
    from asyncq.backends._rpc_lean import LeanReplies
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError.for_extra("aio-pika", "amqp") from exc

__all__ = ["RPCBackend"]

log = logging.getLogger(__name__)

BROKER_URL: Final = Option("broker_url", optional(text), None)
EXCHANGE: Final = Option("exchange", text, "asyncq.rpc")
CACHE_SIZE: Final = Option("cache_size", integer(1), 10_000)
PUBLISH_TIMEOUT: Final = Option("publish_timeout", seconds, 30.0)
CONNECT_TIMEOUT: Final = Option("connect_timeout", seconds, DEFAULT_CONNECT_TIMEOUT)
CONNECTION_NAME: Final = Option("connection_name", text, "asyncq.rpc")

#: Options of this backend (URL query or keyword), with their defaults; ``broker_url`` is required.
RPC_OPTIONS: Final = (BROKER_URL, EXCHANGE, CACHE_SIZE, PUBLISH_TIMEOUT, CONNECT_TIMEOUT, CONNECTION_NAME)

H_ORIGIN: Final = "x-asyncq-origin"  # the publishing backend instance: it ignores its own echo
H_TASK: Final = "x-asyncq-task-id"
H_FINAL: Final = "x-asyncq-final"
H_TTL: Final = "x-asyncq-ttl-ms"  # integer ms: AMQP tables would carry floats as 32-bit


class RPCBackend(BackendDefaults):
    """``rpc://``: task records published back to the waiting caller over RabbitMQ.

    Options (keyword or ``rpc://?...`` query):

    * ``broker_url`` (required): the amqp(s):// URL to connect to; the App passes its broker
      URL. asyncq's broker options in it (queue_type, ...) are ignored; client options kept.
    * ``exchange`` ("asyncq.rpc"): the direct exchange records are published to.
    * ``cache_size`` (10000): how many task ids' records this process keeps (oldest dropped).
    * ``publish_timeout`` (30.0 s): how long ``set`` waits for RabbitMQ's confirm.
    * ``connect_timeout`` (10.0 s; the App passes ``broker_connection_timeout``): how long the
      first connect may take before BackendConnectionError names the address.
    * ``connection_name`` ("asyncq.rpc"): shown in the management UI.
    """

    capabilities = BackendCapabilities(persistent=False, notifies=True, shared=False, counters=False)

    def __init__(self, url: str = "rpc://", **options: Any) -> None:
        self.url = url
        parts = urlsplit(url)
        if parts.netloc or parts.path not in ("", "/"):
            raise ConfigurationError(
                f"{redact_url(url)!r}: rpc:// takes no host; "
                "it connects to the broker_url option (the App's broker)"
            )
        settings = parse_options(parts.query, options, RPC_OPTIONS, what="rpc:// backend")
        broker_url = settings[BROKER_URL]
        if broker_url is None or urlsplit(broker_url).scheme not in ("amqp", "amqps"):
            shown = redact_url(broker_url) if broker_url is not None else broker_url
            raise ConfigurationError(
                f"rpc:// needs an amqp:// broker: set broker_url to an amqp(s):// URL (got {shown!r})"
            )
        # The broker driver's own options in the URL (queue_type, ...) are the broker's
        # business; the client's (TLS, heartbeat) are kept, reconnect_interval defaulted.
        self._client_url = client_url(broker_url)
        # The broker's client option decides here too: records leave on asyncq's own
        # publishing connection (lean) or on an aio-pika channel.
        self._lean_client = dict(parse_qsl(urlsplit(broker_url).query)).get("client", "lean") != "aio-pika"
        self._broker_url = broker_url
        self.exchange = settings[EXCHANGE]
        self.cache_size = settings[CACHE_SIZE]
        self.publish_timeout = settings[PUBLISH_TIMEOUT]
        self.connect_timeout = settings[CONNECT_TIMEOUT]
        self.connection_name = settings[CONNECTION_NAME]
        self._origin = uuid.uuid4().hex
        # task id -> (record, final, expires_at); insertion order is the eviction order.
        self._records: collections.OrderedDict[str, tuple[bytes, bool, float | None]] = (
            collections.OrderedDict()
        )
        self._waiters: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._arrivals: dict[str, asyncio.Future[None]] = {}  # see arrival()
        self._bound: set[str] = set()
        # Ids sent with this instance's reply address: their records come without a binding.
        self._addressed: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._reply_key = f"asyncq.rpc.{self._origin}"
        self._tasks: set[asyncio.Task[None]] = set()
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._reply_queue: AbstractRobustQueue | None = None
        self._channels: tuple[AbstractRobustChannel, ...] = ()
        self._connect_lock = asyncio.Lock()
        # client=lean: the reply queue and the publishes on asyncq's own connections.
        self._lean: LeanPublisher | None = None
        self._replies: LeanReplies | None = None

    # -- connection ----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect; declare the exchange and this instance's reply queue, and consume it."""
        await self._ready()

    def _is_open(self) -> bool:
        return self._connection is not None or self._replies is not None

    async def _ready(self) -> AbstractRobustQueue | None:
        """Connect once; the aio-pika reply queue, or None on asyncq's own connection."""
        if self._lean_client:
            if self._replies is None:
                await self._ready_lean()
            return None
        if self._reply_queue is not None and self._connection is not None and not self._connection.is_closed:
            return self._reply_queue
        async with self._connect_lock:
            if self._reply_queue is not None and self._connection is not None:
                return self._reply_queue
            connection = await open_robust(
                self._client_url,
                self._broker_url,
                connection_name=self.connection_name,
                timeout=self.connect_timeout,
                error=BackendConnectionError,
                what="RabbitMQ (rpc:// backend)",
            )
            try:
                with translate_errors("rpc:// setup", BackendError, BackendConnectionError):
                    async with asyncio.timeout(self.connect_timeout):
                        publish_channel = None
                        if not self._lean_client:
                            publish_channel = await connection.channel(publisher_confirms=True)
                            self._publish_channel = publish_channel
                        channel = await connection.channel(publisher_confirms=False)
                        await channel.declare_exchange(self.exchange, type="direct", durable=True)
                        # Exclusive: it dies with this connection. Declared "robust", so after a
                        # reconnect aio-pika declares it again with its bindings and consumer;
                        # records published during the outage are lost.
                        queue = await channel.declare_queue(self._reply_key, exclusive=True, auto_delete=True)
                        # The one binding of the reply address (restored with the queue).
                        await queue.bind(self.exchange, routing_key=self._reply_key)
                        await queue.consume(self._on_message_async, no_ack=True)
            except BaseException:
                await close_robust(connection)
                raise
            self._connection, self._reply_queue = connection, queue
            self._channels = (channel,) if publish_channel is None else (publish_channel, channel)
            if self._lean_client:
                params = LeanParams(self._client_url, connection_name=self.connection_name)
                self._lean = LeanPublisher(params, confirm=True, connect_timeout=self.connect_timeout)
            return queue

    async def _ready_lean(self) -> None:
        async with self._connect_lock:
            if self._replies is not None:
                return
            params = LeanParams(self._client_url, connection_name=self.connection_name)
            replies = LeanReplies(
                params,
                exchange=self.exchange,
                queue=self._reply_key,
                on_message=self._on_message,
                timeout=self.connect_timeout,
            )
            try:
                await replies.open()
            except BrokerConnectionError as exc:
                raise await connect_error(
                    exc,
                    self._client_url,
                    self._broker_url,
                    timeout=self.connect_timeout,
                    error=BackendConnectionError,
                    what="RabbitMQ (rpc:// backend)",
                ) from exc
            except BrokerError as exc:
                raise BackendError(f"rpc:// setup: {exc}") from exc
            self._replies = replies
            self._lean = LeanPublisher(params, confirm=True, connect_timeout=self.connect_timeout)

    async def aclose(self) -> None:
        """Close the connection and wake every pending ``wait`` with None."""
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)
        self._waiters.clear()
        for task in list(self._tasks):
            task.cancel()
        connection, self._connection, self._reply_queue = self._connection, None, None
        self._bound.clear()
        lean, self._lean = self._lean, None
        replies, self._replies = self._replies, None
        if lean is not None:
            await lean.close()
        if replies is not None:
            await replies.close()
        if connection is not None:
            await close_robust(connection)

    # -- receiving -----------------------------------------------------------------------------

    async def _on_message_async(self, message: AbstractIncomingMessage) -> None:
        self._on_message(message)

    def _on_message(self, message: AbstractIncomingMessage | LeanMessage) -> None:
        headers = message.headers
        if headers.get(H_ORIGIN) == self._origin:
            return  # our own set(): already stored when it was made
        task_id = headers.get(H_TASK)
        if not isinstance(task_id, str):
            return
        ttl_ms = headers.get(H_TTL)
        ttl = ttl_ms / 1000 if isinstance(ttl_ms, int) and not isinstance(ttl_ms, bool) else None
        final = headers.get(H_FINAL) is True
        self._store(task_id, message.body, final, ttl)
        arrival = self._arrivals.pop(task_id, None)
        if arrival is not None and not arrival.done():
            arrival.set_result(None)
        if final:
            self._addressed.pop(task_id, None)
        if final and task_id in self._bound:
            # Nothing more will come for this id: drop the binding so bindings do not pile up.
            self._bound.discard(task_id)
            task = asyncio.get_running_loop().create_task(self._unbind(task_id), name="asyncq.rpc.unbind")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _store(self, task_id: str, record: bytes, final: bool, ttl: float | None) -> None:
        self._records[task_id] = (record, final, None if ttl is None else now() + ttl)
        self._records.move_to_end(task_id)
        while len(self._records) > self.cache_size:
            self._records.popitem(last=False)
        if final:
            for future in self._waiters.pop(task_id, ()):
                if not future.done():
                    future.set_result(record)

    def _live(self, task_id: str) -> tuple[bytes, bool, float | None] | None:
        entry = self._records.get(task_id)
        if entry is not None and entry[2] is not None and entry[2] <= now():
            del self._records[task_id]
            return None
        return entry

    def arrival(self, task_id: str) -> asyncio.Future[None]:
        """Done when a record of ``task_id`` comes from the network (any record: it ran).

        The App stops waiting for the publish confirm then: the round trip sees the result
        as soon as it comes, the confirm overlapping it.
        """
        future: asyncio.Future[None] = Arrival(loop=asyncio.get_running_loop())
        arrivals = self._arrivals
        arrivals[task_id] = future
        if len(arrivals) > self.cache_size:
            # Those whose record never came (the App cancels a future once it is done with
            # it): the oldest go, without a callback per future.
            arrivals.pop(next(iter(arrivals)))
        return future

    def reply_address(self) -> str:
        """This instance's reply address: the App puts it in the ``reply_to`` header of tasks it sends."""
        return self._reply_key

    async def prepare(self, task_id: str) -> None:
        """Ready the reply queue before ``task_id`` is sent with :meth:`reply_address` (the App does).

        No binding per task: the worker copies the record to the reply address.
        """
        await self._ready()
        addressed = self._addressed
        addressed[task_id] = None
        if len(addressed) > self.cache_size:
            addressed.popitem(last=False)

    async def _listen(self, task_id: str) -> None:
        """Make sure the records of ``task_id`` come here: addressed to us, or bound by id."""
        if task_id in self._addressed:
            await self._ready()
        else:
            await self._bind(task_id)

    async def _bind(self, task_id: str) -> None:
        """Bind the reply queue to ``task_id``: for ids this process did not send itself."""
        if task_id in self._bound:
            return
        queue = await self._ready()
        self._bound.add(task_id)  # before the await: concurrent callers bind once
        replies = self._replies
        try:
            if replies is not None:
                await self._riding_out(f"rpc:// bind task {task_id}", lambda: replies.bind(task_id))
            else:
                assert queue is not None
                await self._riding_out(
                    f"rpc:// bind task {task_id}", lambda: queue.bind(self.exchange, routing_key=task_id)
                )
        except BaseException:
            self._bound.discard(task_id)
            if replies is not None:
                replies.forget(task_id)
            raise

    async def _riding_out(self, action: str, op: Callable[[], Awaitable[Any]]) -> None:
        """Run ``op``; while the connection is being restored, wait and retry, up to publish_timeout.

        So a producer rides through a broker restart here as the broker's publish does,
        instead of failing the moment the connection drops.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    replies = self._replies
                    connection = self._connection
                    if replies is not None:
                        await replies.connected()
                    elif connection is not None:
                        await connection.connected.wait()
                    # aio-pika sets ``connected`` before it has declared the reply queue
                    # again on a restored channel: a bind in between finds no queue.
                    for channel in self._channels:
                        await channel.ready()
                    with translate_errors(action, BackendError, BackendConnectionError):
                        await op()
                return
            except TimeoutError:
                raise BackendConnectionError(
                    f"{action}: RabbitMQ unreachable for publish_timeout={self.publish_timeout}s"
                ) from None
            except (BackendConnectionError, BrokerConnectionError) as exc:
                if not self._is_open() or loop.time() >= deadline:
                    if isinstance(exc, BackendConnectionError):
                        raise
                    raise BackendConnectionError(f"{action}: {exc}") from exc
                await asyncio.sleep(0.05)  # let the connection notice the loss and restore
            except BrokerError as exc:
                raise BackendError(f"{action}: {exc}") from exc

    async def _unbind(self, task_id: str) -> None:
        replies = self._replies
        if replies is not None:
            try:
                await replies.unbind(task_id)
            except BrokerError as exc:
                log.debug("rpc:// unbind task %s: %s", task_id, exc)  # harmless, as below
            return
        queue = self._reply_queue
        if queue is None:
            return
        try:
            with translate_errors(f"rpc:// unbind task {task_id}", BackendError, BackendConnectionError):
                await queue.unbind(self.exchange, routing_key=task_id)
        except BackendError as exc:
            # Harmless: the binding goes away with the reply queue when this process disconnects.
            log.debug("%s", exc)

    # -- the ResultBackend protocol ------------------------------------------------------------

    async def set(self, task_id: str, record: bytes, *, final: bool, ttl: float | None) -> None:
        """Publish the record to whoever bound ``task_id``; keep a copy in this process."""
        await self._publish(task_id, record, final, ttl, None)

    async def set_reply(
        self, task_id: str, record: bytes, *, final: bool, ttl: float | None, reply_to: str
    ) -> None:
        """``set``, copied to the sender's reply address as well (CC: no binding per task)."""
        await self._publish(task_id, record, final, ttl, reply_to)

    async def _publish(
        self, task_id: str, record: bytes, final: bool, ttl: float | None, reply_to: str | None
    ) -> None:
        self._store(task_id, record, final, ttl)
        await self._ready()
        headers: dict[str, Any] = {H_ORIGIN: self._origin, H_TASK: task_id, H_FINAL: final}
        if ttl is not None:
            headers[H_TTL] = int(ttl * 1000)
        if reply_to is not None:
            headers["CC"] = [reply_to]  # also routed with this key; RabbitMQ strips the header
        # No message_id: nothing reads a record's, and a uuid4 per record cost ~4 µs.
        properties = Basic.Properties(
            headers=headers,
            delivery_mode=1,  # results are not persisted
            expiration=str(max(1, int(ttl * 1000))) if ttl is not None and ttl > 0 else None,
        )

        if self._lean is not None:
            await self._publish_lean(task_id, record, properties)
            return

        async def send() -> None:
            channel = self._publish_channel
            assert channel is not None
            # The aiormq channel itself: no aio-pika message object per record.
            # Not mandatory: with nobody listening the record is dropped, by design.
            underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
            # Records set in the same loop iteration go out in one write; confirms pipelined.
            await publish(
                underlay, record, exchange=self.exchange, routing_key=task_id, properties=properties
            )

        try:
            await self._riding_out(f"rpc:// publish the record of {task_id}", send)
        except BackendConnectionError as exc:
            # Records are not persisted: one lost in an outage is what rpc:// promises, not a
            # fault of the task. One line, not a traceback per task.
            log.warning("rpc:// result of task %s lost: %s", task_id, exc)

    async def _publish_lean(self, task_id: str, record: bytes, properties: Basic.Properties) -> None:
        """Publish a record on asyncq's own connection, riding out a reconnect up to publish_timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        action = f"rpc:// publish the record of {task_id}"
        while True:
            lean = self._lean
            if lean is None:
                return  # closed meanwhile: nobody is left to give the record to
            try:
                try:
                    # Not mandatory: with nobody listening the record is dropped, by design.
                    await lean.publish(self.exchange, task_id, record, properties, deadline=deadline)
                    return
                except TimeoutError:
                    raise BackendConnectionError(
                        f"{action}: RabbitMQ unreachable for publish_timeout={self.publish_timeout}s"
                        + lean.blocked_note()
                    ) from None
                except BrokerConnectionError as exc:
                    if not self._is_open() or loop.time() >= deadline:
                        raise BackendConnectionError(f"{action}: {exc}") from exc
                    await asyncio.sleep(0.05)
                except BrokerError as exc:
                    raise BackendError(f"{action}: {exc}") from exc
            except BackendConnectionError as exc:
                # As below: a record lost in an outage is what rpc:// promises, in one line.
                log.warning("rpc:// result of task %s lost: %s", task_id, exc)
                return

    async def get(self, task_id: str) -> bytes | None:
        """The last record received (or set) in this process; binds ``task_id`` if unknown."""
        entry = self._live(task_id)
        if entry is None:
            await self._listen(task_id)
            return None
        return entry[0]

    async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
        return [await self.get(task_id) for task_id in task_ids]

    async def wait(self, task_id: str, *, timeout: float | None) -> bytes | None:
        entry = self._live(task_id)
        if entry is not None and entry[1]:
            return entry[0]
        # Registered before binding: a record arriving (or set here) meanwhile wakes it.
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(task_id, [])
        waiters.append(future)
        try:
            async with asyncio.timeout(timeout):
                await self._listen(task_id)
                return await future
        except TimeoutError:
            return None
        finally:
            if future in waiters:
                waiters.remove(future)
            if not waiters and self._waiters.get(task_id) is waiters:
                del self._waiters[task_id]

    async def forget(self, task_id: str) -> None:
        """Drop this process's copy and stop listening for ``task_id``."""
        self._records.pop(task_id, None)
        self._addressed.pop(task_id, None)
        if task_id in self._bound:
            self._bound.discard(task_id)
            await self._unbind(task_id)

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Not possible: RPC keeps no shared state."""
        raise BackendError("rpc:// cannot hold counters; use another backend for chords")
