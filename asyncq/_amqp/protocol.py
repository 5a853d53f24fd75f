"""A lean AMQP 0-9-1 connection: one ``asyncio.Protocol``, one channel, no task per delivery.

aiormq starts a task per delivery and aio-pika wraps each one; here ``data_received``
parses the frames, assembles Deliver + header + body and calls a synchronous callback
with a :class:`LeanMessage`. Acks of one loop iteration leave in one write: one
``multiple=True`` ack for the settled run of tags, singles for the gaps. RPCs (qos,
consume, cancel, a passive declare used to confirm acks) run one at a time with a deadline.

For publishing, :meth:`LeanConnection.publish` builds the frames by hand
(:mod:`.content`) and the publishes of one loop iteration leave in one write; in confirm
mode each gets a future that the server's acks settle (:mod:`.confirms`), so any number of
confirms are in flight at once.

The connection does not reconnect: its owner opens a new one (see the RabbitMQ
consumer). Once it is lost, every :class:`LeanMessage` it delivered is stale.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import ssl as ssl_module
from collections.abc import Callable
from typing import Any, Final, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from pamqp.commands import Basic, Channel, Confirm, Connection, Exchange
from pamqp.header import ProtocolHeader
from pamqp.heartbeat import Heartbeat

from asyncq._amqp.confirms import Confirms
from asyncq._amqp.content import publish_frames
from asyncq._amqp.frames import Deliver, FrameError, FrameReader, ServerAck, ack_frame, marshal
from asyncq._amqp.header import ContentHead
from asyncq.exceptions import BrokerConnectionError, BrokerError, ConfigurationError

__all__ = ["HandshakeTimeout", "LeanConnection", "LeanMessage", "LeanParams"]

logger = logging.getLogger(__name__)

_CHANNEL: Final = 1
_FRAME_MAX: Final = 131072


class HandshakeTimeout(BrokerConnectionError):
    """The connect or the AMQP handshake did not finish within its deadline."""


class LeanMessage:
    """One delivery: the fields the broker reads of aio-pika's IncomingMessage."""

    __slots__ = (
        "body",
        "channel",
        "consumer_tag",
        "delivery_tag",
        "headers",
        "message_id",
        "priority",
        "processed",
        "redelivered",
    )

    def __init__(
        self, channel: LeanConnection, deliver: Deliver, properties: ContentHead, body: bytes
    ) -> None:
        self.channel = channel
        self.consumer_tag = deliver.consumer_tag
        self.delivery_tag = deliver.delivery_tag
        self.redelivered = deliver.redelivered
        self.body = body
        self.headers: dict[str, Any] = properties.headers or {}
        self.message_id = properties.message_id
        self.priority = properties.priority
        self.processed = False


class LeanParams:
    """Where and how to connect, from an amqp(s):// URL (the client options aio-pika knows)."""

    def __init__(self, url: str, *, connection_name: str) -> None:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        self.host = parts.hostname or "localhost"
        self.tls = parts.scheme == "amqps"
        self.port = parts.port or (5671 if self.tls else 5672)
        self.user = unquote(parts.username or "guest")
        self.password = unquote(parts.password or "guest")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        self.vhost = unquote(path) if path else "/"
        self.heartbeat = int(float(query.get("heartbeat", "60")))
        self.reconnect_interval = float(query.get("reconnect_interval", "1.0"))
        self.connection_name = query.get("name", connection_name)
        # aiormq's ``auth``: PLAIN (user and password), or EXTERNAL (the TLS client certificate).
        self.mechanism = query.get("auth", "plain").upper()
        if self.mechanism not in ("PLAIN", "EXTERNAL"):
            raise ConfigurationError(
                f"auth={query['auth']!r}: asyncq's AMQP client speaks PLAIN and EXTERNAL"
                " (client=aio-pika for more)"
            )
        self.ssl: ssl_module.SSLContext | None = None
        if self.tls:
            context = ssl_module.create_default_context(
                cafile=query.get("cafile"), capath=query.get("capath"), cadata=query.get("cadata")
            )
            if query.get("certfile"):
                context.load_cert_chain(query["certfile"], query.get("keyfile"))
            if query.get("no_verify_ssl", "0") not in ("0", "", "false", "False"):
                context.check_hostname = False
                context.verify_mode = ssl_module.CERT_NONE
            self.ssl = context


class LeanConnection(asyncio.Protocol):
    """One AMQP connection with one channel (number 1), for consuming or publishing."""

    def __init__(
        self, on_message: Callable[[LeanMessage], None], on_lost: Callable[[BaseException], None]
    ) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._reader = FrameReader()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._params: LeanParams | None = None
        self._opened: asyncio.Future[None] = self._loop.create_future()
        self._rpc: asyncio.Future[Any] | None = None
        self._rpc_lock = asyncio.Lock()
        self._error: BaseException | None = None
        self.is_closed = False
        self.server_properties: dict[str, Any] = {}
        # Delivery being assembled: Deliver, then its header, then body frames.
        self._deliver: Deliver | None = None
        self._properties: ContentHead | None = None
        self._body_size = 0
        self._chunks: list[bytes] = []
        self._received = 0
        # Ack batching: tags delivered and not settled bound the multiple=True ack.
        self.unsettled: set[int] = set()
        self._acked: list[int] = []
        self._heartbeat = 0
        self._last_read = 0.0
        self._beat: asyncio.TimerHandle | None = None
        self._no_ack: set[str] = set()  # consumer tags whose deliveries are not acked
        # Publishing: frames queued this loop iteration, confirms, a returned message's head.
        self.frame_max = _FRAME_MAX
        self.confirms: Confirms | None = None
        self._out: list[bytes] = []
        self._holding = False  # a publish left this loop iteration: later ones are gathered
        self._returning: Basic.Return | None = None
        self._paused: asyncio.Future[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None  # the confirms' deadline timer
        self._expiry_at = 0.0
        # Why RabbitMQ stopped reading this connection's publishes (a memory or disk alarm:
        # connection.blocked), until connection.unblocked; None while it reads them.
        self.blocked: str | None = None

    # -- opening ------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        params: LeanParams,
        on_message: Callable[[LeanMessage], None],
        on_lost: Callable[[BaseException], None],
        *,
        timeout: float,
    ) -> LeanConnection:
        """Connect, authenticate (PLAIN), tune and open channel 1 within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        protocol = cls(on_message, on_lost)
        protocol._params = params
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: protocol,
                    params.host,
                    params.port,
                    ssl=params.ssl,
                    server_hostname=params.host if params.ssl else None,
                )
                await asyncio.shield(protocol._opened)
                await protocol.rpc(Channel.Open(), Channel.OpenOk)
        except TimeoutError:
            protocol.abort()
            raise HandshakeTimeout(
                f"RabbitMQ at {params.host}:{params.port} did not finish the AMQP handshake "
                f"within {timeout:g}s"
            ) from None
        except OSError as exc:
            protocol.abort()
            raise BrokerConnectionError(
                f"cannot connect to RabbitMQ at {params.host}:{params.port}: {exc}"
            ) from exc
        except BaseException:
            protocol.abort()
            raise
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        self._last_read = self._loop.time()
        self._transport.write(ProtocolHeader().marshal())

    def _on_connection_method(self, value: object) -> None:
        params = self._params
        assert params is not None
        assert self._transport is not None
        if isinstance(value, Connection.Start):
            self.server_properties = dict(value.server_properties or {})
            response = f"\0{params.user}\0{params.password}" if params.mechanism == "PLAIN" else ""
            start_ok = Connection.StartOk(
                client_properties={
                    "product": "asyncq",
                    "connection_name": params.connection_name,
                    "capabilities": {
                        "basic.nack": True,
                        "consumer_cancel_notify": True,
                        "connection.blocked": True,
                        "authentication_failure_close": True,
                    },
                },
                mechanism=params.mechanism,
                response=response,
            )
            self._transport.write(marshal(start_ok, 0))
        elif isinstance(value, Connection.Tune):
            frame_max = min(value.frame_max or _FRAME_MAX, _FRAME_MAX)
            heartbeat = min(value.heartbeat, params.heartbeat) if value.heartbeat else params.heartbeat
            self._heartbeat = heartbeat
            self.frame_max = frame_max
            self._transport.write(
                marshal(Connection.TuneOk(channel_max=1, frame_max=frame_max, heartbeat=heartbeat), 0)
                + marshal(Connection.Open(virtual_host=params.vhost), 0)
            )
        elif isinstance(value, Connection.OpenOk):
            if not self._opened.done():
                self._opened.set_result(None)
            if self._heartbeat:
                self._beat = self._loop.call_later(self._heartbeat / 2, self._on_beat)
        elif isinstance(value, Connection.Blocked):
            self.blocked = value.reason or "no reason given"
            logger.warning(
                "RabbitMQ blocked publishing on connection %r (%s: a memory or disk alarm);"
                " its publishes wait until the alarm clears",
                params.connection_name,
                self.blocked,
            )
        elif isinstance(value, Connection.Unblocked):
            self.blocked = None
            logger.warning("RabbitMQ unblocked publishing on connection %r", params.connection_name)
        elif isinstance(value, Connection.Close):
            self._transport.write(marshal(Connection.CloseOk(), 0))
            self._fail(
                BrokerConnectionError(
                    f"RabbitMQ closed the connection: {value.reply_code} {value.reply_text}"
                )
            )
        elif isinstance(value, Connection.CloseOk):
            self._fail(BrokerConnectionError("the connection to RabbitMQ was closed"))

    def _on_beat(self) -> None:
        if self.is_closed or self._transport is None:
            return
        if self._loop.time() - self._last_read > 2 * self._heartbeat:
            self._fail(BrokerConnectionError(f"RabbitMQ sent nothing for {2 * self._heartbeat}s (heartbeat)"))
            return
        self._transport.write(marshal(Heartbeat(), 0))
        self._beat = self._loop.call_later(self._heartbeat / 2, self._on_beat)

    # -- reading ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._last_read = self._loop.time()
        try:
            frames = self._reader.feed(data)
        except (FrameError, ValueError) as exc:
            self._fail(BrokerConnectionError(f"unreadable data from RabbitMQ: {exc}"))
            return
        for channel, value in frames:
            if type(value) is bytes:
                self._on_body(value)
            elif type(value) is Deliver:
                self._deliver, self._properties, self._chunks, self._received = value, None, [], 0
            elif type(value) is ServerAck:
                if self.confirms is not None:
                    self.confirms.settle(value)
            elif type(value) is ContentHead:
                if self._returning is not None:
                    self._on_returned(self._returning, value)
                    continue
                self._properties, self._body_size = value, value.body_size
                if value.body_size == 0:
                    self._on_body(b"")
            elif type(value) is Heartbeat:
                continue
            elif channel == 0:
                self._on_connection_method(value)
            else:
                self._on_channel_method(value)
            if self.is_closed:
                return

    def _on_body(self, chunk: bytes) -> None:
        deliver, properties = self._deliver, self._properties
        if deliver is None or properties is None:
            return
        self._received += len(chunk)
        if self._received < self._body_size:
            self._chunks.append(chunk)
            return
        body = b"".join((*self._chunks, chunk)) if self._chunks else chunk
        self._deliver, self._properties, self._chunks = None, None, []
        if deliver.consumer_tag not in self._no_ack:
            self.unsettled.add(deliver.delivery_tag)
        self._on_message(LeanMessage(self, deliver, properties, body))

    def _on_returned(self, returned: Basic.Return, properties: ContentHead) -> None:
        # The returned body frames that follow find no delivery under way and are skipped.
        self._returning, self._deliver = None, None
        if self.confirms is not None:
            self.confirms.returned(properties.message_id, returned.reply_code or 0, returned.reply_text)

    def _on_channel_method(self, value: object) -> None:
        if isinstance(value, Basic.Return):
            self._returning = value
            return
        if isinstance(value, Channel.Close):
            assert self._transport is not None
            self._transport.write(marshal(Channel.CloseOk(), _CHANNEL))
            error = BrokerError(f"RabbitMQ closed the channel: {value.reply_code} {value.reply_text}")
            # One channel per connection: without it the connection is of no use.
            self._fail(error)
            self.close_soon()
            return
        if isinstance(value, Basic.Cancel):
            self._fail(BrokerConnectionError("RabbitMQ cancelled the consumer (queue deleted?)"))
            self.close_soon()
            return
        rpc = self._rpc
        if rpc is not None and not rpc.done():
            rpc.set_result(value)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(
            BrokerConnectionError(
                f"connection to RabbitMQ lost ({exc!r})" if exc else "connection to RabbitMQ closed"
            )
        )

    def _fail(self, error: BaseException) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        self._error = error
        if self._beat is not None:
            self._beat.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if not self._opened.done():
            self._opened.set_exception(error)
            self._opened.exception()  # retrieved: open() re-raises it
        if self._rpc is not None and not self._rpc.done():
            self._rpc.set_exception(error)
        self._acked.clear()
        self._out.clear()
        if self.confirms is not None:
            self.confirms.fail_all(error)
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)  # writers wake and find the connection closed
        self._on_lost(error)

    # -- writing ------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.is_closed or self._transport is None:
            raise self._error or BrokerConnectionError("connection to RabbitMQ closed")
        self._transport.write(data)

    async def rpc(self, method: Any, reply: type, *, timeout: float = 30.0) -> Any:
        """Send a synchronous method on channel 1 and return the server's reply."""
        async with self._rpc_lock:
            # Earlier acks and publishes go first: the reply then confirms they were read.
            self.flush_acks()
            self.flush_publishes()
            future: asyncio.Future[Any] = self._loop.create_future()
            self._rpc = future
            try:
                self._write(marshal(method, _CHANNEL))
                async with asyncio.timeout(timeout):
                    answer = await future
            except BaseException:
                if not future.done() or future.cancelled():
                    future.cancel()  # nobody awaits it any more: no exception left unretrieved
                    # Its reply may still come and would answer the next call: drop the
                    # connection instead (its owner reconnects), as aiormq closes the channel.
                    self._fail(BrokerConnectionError(f"RabbitMQ did not answer {method.name}"))
                    self.close_soon()
                raise
            finally:
                self._rpc = None
        if not isinstance(answer, reply):
            raise BrokerError(f"RabbitMQ answered {answer!r} to {method!r}")
        return answer

    async def qos(self, prefetch: int, *, global_: bool, timeout: float) -> None:
        await self.rpc(Basic.Qos(prefetch_count=prefetch, global_=global_), Basic.QosOk, timeout=timeout)

    async def consume(self, queue: str, consumer_tag: str, *, timeout: float, no_ack: bool = False) -> None:
        """Start consuming ``queue`` under ``consumer_tag`` (chosen by the caller, who must
        know it before the reply: deliveries can follow the reply in the same read)."""
        if no_ack:
            self._no_ack.add(consumer_tag)
        await self.rpc(
            Basic.Consume(queue=queue, consumer_tag=consumer_tag, no_ack=no_ack),
            Basic.ConsumeOk,
            timeout=timeout,
        )

    async def cancel(self, consumer_tag: str, *, timeout: float) -> None:
        await self.rpc(Basic.Cancel(consumer_tag=consumer_tag), Basic.CancelOk, timeout=timeout)

    async def sync(self, *, timeout: float) -> None:
        """Return once the server processed every frame written so far (a passive declare's reply)."""
        await self.rpc(
            Exchange.Declare(exchange="amq.direct", exchange_type="direct", passive=True),
            Exchange.DeclareOk,
            timeout=timeout,
        )

    # -- publishing ---------------------------------------------------------------------

    async def select_confirms(self, *, timeout: float) -> None:
        """Put the channel in confirm mode: every later publish's future waits for its ack."""
        await self.rpc(Confirm.Select(), Confirm.SelectOk, timeout=timeout)
        self.confirms = Confirms()

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        *,
        mandatory: bool = False,
        deadline: float | None = None,
    ) -> asyncio.Future[None]:
        """Publish; the future is its confirm. The first publish of a loop iteration is
        written now, later ones of the iteration together after it.

        Without confirm mode the future is done at once. In confirm mode it fails with
        PublishNacked, PublishReturned (``mandatory``, matched by ``message_id``), the
        connection's error if the connection is lost first, or TimeoutError if no confirm
        came by ``deadline`` (loop time).
        """
        if self.is_closed:
            raise self._error or BrokerConnectionError("connection to RabbitMQ closed")
        data = publish_frames(
            _CHANNEL, exchange, routing_key, body, properties, mandatory=mandatory, frame_max=self.frame_max
        )
        future: asyncio.Future[None] = self._loop.create_future()
        confirms = self.confirms
        if confirms is not None:
            confirms.add(future, properties.message_id if mandatory else None)
            if deadline is not None:
                earliest = confirms.watch(future, deadline)
                if self._expiry is None or earliest < self._expiry_at:
                    self._arm(earliest)
        else:
            future.set_result(None)
        if self._holding:
            self._out.append(data)
        else:
            # The first publish of a loop iteration leaves at once (a sequential publisher
            # waits for nothing); the rest of the iteration's go out together after it.
            self._write(data)
            self._holding = True
            self._loop.call_soon(self._release)
        return future

    def _arm(self, when: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry, self._expiry_at = self._loop.call_at(when, self._expire), when

    def _expire(self) -> None:
        self._expiry = None
        if self.confirms is None or self.is_closed:
            return
        following = self.confirms.expire(self._loop.time())
        if following is not None:
            self._arm(following)

    def _release(self) -> None:
        self._holding = False
        self.flush_publishes()

    def flush_publishes(self) -> None:
        if not self._out or self.is_closed:
            return
        data = b"".join(self._out)
        self._out.clear()
        self._write(data)

    @property
    def paused(self) -> bool:
        """The transport's buffer is full: a publisher should ``await writable()`` first."""
        return self._paused is not None

    async def writable(self) -> None:
        if self._paused is not None:
            await asyncio.shield(self._paused)

    def pause_writing(self) -> None:
        if self._paused is None:
            self._paused = self._loop.create_future()

    def resume_writing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None and not paused.done():
            paused.set_result(None)

    # -- acking -------------------------------------------------------------------------

    def ack(self, tag: int) -> None:
        """Queue an ack; the acks of one loop iteration leave together."""
        if self.is_closed:
            return  # the server redelivers it, as with any ack lost with its channel
        if tag not in self.unsettled:
            self._write(ack_frame(_CHANNEL, tag, False))
            return
        if not self._acked:
            self._loop.call_soon(self.flush_acks)
        self._acked.append(tag)

    def flush_acks(self) -> None:
        if not self._acked or self.is_closed:
            return
        acked, self._acked = sorted(self._acked), []
        unsettled = self.unsettled
        unsettled.difference_update(acked)
        # Everything below the oldest unsettled delivery is acked: one frame covers that run.
        end = bisect.bisect_left(acked, min(unsettled)) if unsettled else len(acked)
        frames = [ack_frame(_CHANNEL, acked[end - 1], True)] if end else []
        frames += [ack_frame(_CHANNEL, tag, False) for tag in acked[end:]]
        self._write(b"".join(frames))

    def reject(self, tag: int, *, requeue: bool) -> None:
        self.flush_acks()
        self.unsettled.discard(tag)
        self._write(marshal(Basic.Reject(delivery_tag=tag, requeue=requeue), _CHANNEL))

    def settled(self, tag: int) -> None:
        self.unsettled.discard(tag)

    # -- closing ------------------------------------------------------------------------

    def close_soon(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self._fail(BrokerConnectionError("connection to RabbitMQ closed"))
        if self._transport is not None:
            self._transport.abort()

    async def close(self, *, timeout: float) -> None:
        """Close channel and connection politely (acks flushed first); never raises."""
        if self.is_closed:
            self.close_soon()
            return
        # Closing is best effort: the server drops (and requeues) what we leave behind.
        with contextlib.suppress(Exception):
            self.flush_acks()
            self.flush_publishes()
            await self.rpc(Channel.Close(reply_code=200, reply_text="bye"), Channel.CloseOk, timeout=timeout)
            self._write(marshal(Connection.Close(reply_code=200, reply_text="bye"), 0))
        self.close_soon()
