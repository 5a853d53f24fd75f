"""The RabbitMQ broker's control channel: a fanout exchange, reply queues and a stream.

Topology (``E`` is the broker's exchange name, ``asyncq`` by default)::

    E.control    fanout exchange; every listening worker binds an exclusive, server-named queue
    amq.gen-…    a client's exclusive reply queue, named in each request's ``reply_to``
    E.revoked    stream queue of revocations (``x-max-age``: the longest expiry asked for)

RabbitMQ stores no key/value state, so presence is gathered rather than stored: each listening
worker answers a presence request with its last heartbeat, and :meth:`workers` lists the live
workers that answer within its timeout (a lost worker is simply absent).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from asyncq._utils import now
from asyncq.brokers.control import ControlRequest, PresenceRecord

try:
    import aio_pika
    from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

    from asyncq._amqp import translate_errors
except ImportError as exc:  # pragma: no cover - the broker module already refused
    from asyncq.exceptions import MissingDependencyError

    raise MissingDependencyError.for_extra("aio-pika", "amqp") from exc

if TYPE_CHECKING:
    from asyncq.brokers.rabbitmq import RabbitMQBroker

__all__ = ["RabbitMQControlChannel"]

_PRESENCE = b"\x00asyncq.presence"
#: Seconds the revocation stream keeps entries (its segments are dropped whole after that).
REVOKED_MAX_AGE = "1D"


class RabbitMQControlChannel:
    """Control channel over a :class:`~asyncq.brokers.rabbitmq.RabbitMQBroker`'s connection."""

    def __init__(self, broker: RabbitMQBroker) -> None:
        self._broker = broker
        base = broker.exchange or "asyncq"
        self._exchange_name = f"{base}.control"
        self._stream_name = f"{base}.revoked"
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._beats: dict[str, PresenceRecord] = {}

    async def connect(self) -> None:
        await self._open()

    async def _open(self) -> tuple[AbstractChannel, AbstractExchange]:
        if self._channel is not None and not self._channel.is_closed and self._exchange is not None:
            return self._channel, self._exchange
        connection = await self._broker._ready()
        with translate_errors("open the control channel"):
            channel = await connection.channel(publisher_confirms=False)
            exchange = await channel.declare_exchange(self._exchange_name, type="fanout", durable=False)
        self._channel, self._exchange = channel, exchange
        return channel, exchange

    async def aclose(self) -> None:
        channel, self._channel, self._exchange = self._channel, None, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()

    async def beat(self, worker: str, info: bytes, *, ttl: float) -> None:
        current = now()
        self._beats[worker] = PresenceRecord(worker, bytes(info), current, current + ttl)

    async def leave(self, worker: str) -> None:
        self._beats.pop(worker, None)

    async def workers(self, *, timeout: float = 1.0) -> list[PresenceRecord]:
        records = []
        for answer in await self.broadcast(_PRESENCE, timeout=timeout):
            head, _, info = answer.partition(b"\n")
            meta = json.loads(head)
            records.append(PresenceRecord(meta["worker"], info, meta["seen"], meta["expires"]))
        return records

    async def broadcast(self, body: bytes, *, timeout: float, replies: int | None = None) -> list[bytes]:
        connection = await self._broker._ready()
        received: list[bytes] = []
        enough = asyncio.Event()

        async def on_reply(message: AbstractIncomingMessage) -> None:
            received.append(bytes(message.body))
            if replies is not None and len(received) >= replies:
                enough.set()

        with translate_errors("broadcast a control request"):
            channel = await connection.channel(publisher_confirms=False)
        try:
            with translate_errors("broadcast a control request"):
                reply_queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
                await reply_queue.consume(on_reply, no_ack=True)
                exchange = await channel.declare_exchange(self._exchange_name, type="fanout", durable=False)
                request = aio_pika.Message(bytes(body), reply_to=reply_queue.name)
                await exchange.publish(request, routing_key="")
            if replies != 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(enough.wait(), timeout)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return list(received)

    async def listen(self, worker: str) -> AsyncIterator[ControlRequest]:
        channel, exchange = await self._open()
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        with translate_errors("listen for control requests"):
            queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
            await queue.bind(exchange)
            tag = await queue.consume(inbox.put, no_ack=True)
        try:
            while True:
                message = await inbox.get()
                reply_to = message.reply_to or ""
                if bytes(message.body) == _PRESENCE:
                    record = self._beats.get(worker)
                    if record is not None:
                        meta = {"worker": worker, "seen": record.seen, "expires": record.expires}
                        await self._reply(reply_to, json.dumps(meta).encode() + b"\n" + record.info)
                    continue
                yield ControlRequest(bytes(message.body), functools.partial(self._reply, reply_to))
        finally:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)

    async def _reply(self, reply_to: str, body: bytes) -> None:
        channel, _ = await self._open()
        with translate_errors("reply to a control request"):
            # Not mandatory: a client that stopped waiting has deleted its reply queue.
            await channel.default_exchange.publish(
                aio_pika.Message(bytes(body)), routing_key=reply_to, mandatory=False
            )

    async def _stream(self, channel: AbstractChannel) -> Any:
        return await channel.declare_queue(
            self._stream_name,
            durable=True,
            arguments={"x-queue-type": "stream", "x-max-age": REVOKED_MAX_AGE},
        )

    async def revoke(self, task_ids: Sequence[str], *, expires: float) -> None:
        if not task_ids:
            return
        channel, _ = await self._open()
        body = json.dumps({"ids": list(task_ids), "expires": now() + expires}).encode()
        with translate_errors("store a revocation"):
            await self._stream(channel)
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=self._stream_name,
            )

    async def revoked(self) -> dict[str, float]:
        connection = await self._broker._ready()
        found: dict[str, float] = {}
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        with translate_errors("read revocations"):
            channel = await connection.channel(publisher_confirms=False)
        try:
            with translate_errors("read revocations"):
                await channel.set_qos(prefetch_count=1000)
                stream = await self._stream(channel)
                await stream.consume(inbox.put, arguments={"x-stream-offset": "first"})
            current = now()
            # A stream has no end: read until it has been quiet for a moment.
            while True:
                try:
                    message = await asyncio.wait_for(inbox.get(), 0.5)
                except TimeoutError:
                    break
                entry = json.loads(message.body)
                await message.ack()
                if entry["expires"] > current:
                    for task_id in entry["ids"]:
                        found[task_id] = max(found.get(task_id, 0.0), float(entry["expires"]))
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return found
