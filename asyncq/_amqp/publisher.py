"""A publishing connection of asyncq's own, opened on first use and again after a loss.

Publishes go out on a :class:`~.protocol.LeanConnection` (frames by hand, one write per loop
iteration, any number of confirms in flight). The connection does not reconnect by itself:
after a loss the next publish opens a new one, at most once per ``reconnect_interval``, so a
publisher riding out an outage (the broker's retry loop) does not hammer a server that is down.
"""

from __future__ import annotations

import asyncio
import time

from pamqp.commands import Basic

from asyncq._amqp.protocol import LeanConnection, LeanMessage, LeanParams
from asyncq.exceptions import BrokerConnectionError

__all__ = ["LeanPublisher"]

#: Seconds a polite close may take.
_CLOSE_TIMEOUT = 5.0


def _unexpected_delivery(message: LeanMessage) -> None:
    # A publishing connection consumes nothing; a delivery cannot reach it.
    message.channel.reject(message.delivery_tag, requeue=True)


def _ignore_loss(error: BaseException) -> None:
    # A loss fails the confirms in flight; the next publish reconnects.
    del error


class LeanPublisher:
    """Publishes (confirmed or not) on a connection of their own."""

    def __init__(self, params: LeanParams, *, confirm: bool, connect_timeout: float) -> None:
        self._params = params
        self._confirm = confirm
        self._connect_timeout = connect_timeout
        self._connection: LeanConnection | None = None
        self._lock: asyncio.Lock | None = None
        self._failed_at = -float("inf")
        self._failure: BrokerConnectionError | None = None
        self.closed = False

    async def connection(self) -> LeanConnection:
        """The open connection, opened now if there is none (raises BrokerConnectionError)."""
        connection = self._connection
        if connection is not None and not connection.is_closed:
            return connection
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.closed:
                raise BrokerConnectionError("the RabbitMQ publisher was closed")
            connection = self._connection
            if connection is not None and not connection.is_closed:
                return connection
            since = time.monotonic() - self._failed_at
            if self._failure is not None and since < self._params.reconnect_interval:
                raise self._failure  # too soon after a failed attempt: the caller retries later
            try:
                connection = await LeanConnection.open(
                    self._params, _unexpected_delivery, _ignore_loss, timeout=self._connect_timeout
                )
                try:
                    if self._confirm:
                        await connection.select_confirms(timeout=self._connect_timeout)
                except BaseException:
                    connection.abort()
                    raise
            except BrokerConnectionError as exc:
                self._failed_at, self._failure = time.monotonic(), exc
                raise
            self._failure = None
            self._connection = connection
            return connection

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        *,
        mandatory: bool = False,
        deadline: float | None = None,
    ) -> None:
        """Publish and, with confirms, wait for RabbitMQ's ack.

        Raises BrokerConnectionError if the connection is lost first (the message may or may
        not have arrived), PublishReturned / PublishNacked for the server's refusals, and
        TimeoutError at ``deadline`` (loop time), while connecting or waiting for the confirm.
        """
        connection = self._connection
        if connection is None or connection.is_closed or connection.paused:
            if deadline is None:
                connection = await self._writable()
            else:
                async with asyncio.timeout_at(deadline):
                    connection = await self._writable()
        # The confirm's deadline rides on the connection's one timer: no timer per publish.
        await connection.publish(
            exchange, routing_key, body, properties, mandatory=mandatory, deadline=deadline
        )

    @property
    def blocked(self) -> str | None:
        """Why RabbitMQ is not reading this publisher's connection (a resource alarm), or None."""
        connection = self._connection
        return None if connection is None or connection.is_closed else connection.blocked

    def blocked_note(self) -> str:
        """What a publish timeout adds when RabbitMQ blocked the connection (else nothing)."""
        reason = self.blocked
        if reason is None:
            return ""
        return f"; RabbitMQ is blocking publishes on this connection ({reason}: a server resource alarm)"

    async def _writable(self) -> LeanConnection:
        connection = self._connection
        if connection is None or connection.is_closed:
            connection = await self.connection()
        if connection.paused:
            await connection.writable()  # the socket's buffer is full: wait for it to drain
        return connection

    async def close(self) -> None:
        """Close the connection politely (queued publishes leave first); never raises."""
        self.closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close(timeout=_CLOSE_TIMEOUT)
