"""The rpc:// reply queue on asyncq's own AMQP connection: records to a callback, no task each.

What aio-pika's robust queue did for the backend is done here: the exclusive reply queue dies
with its connection, so after a loss :class:`LeanReplies` reconnects every
``reconnect_interval`` seconds, declares the exchange and the queue again, binds the reply
address and every task id bound so far, and consumes again. Records published meanwhile are
lost, which rpc:// allows (docs/backends/rpc.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from pamqp.commands import Exchange, Queue

from asyncq._amqp.protocol import LeanConnection, LeanMessage, LeanParams
from asyncq.exceptions import BrokerConnectionError, BrokerError

__all__ = ["LeanReplies"]

log = logging.getLogger("asyncq.backends.rpc")

_CLOSE_TIMEOUT = 5.0
_CONSUMER_TAG = "asyncq.rpc.replies"


class LeanReplies:
    """One exclusive reply queue, its bindings and its consumer, kept across reconnects."""

    def __init__(
        self,
        params: LeanParams,
        *,
        exchange: str,
        queue: str,
        on_message: Callable[[LeanMessage], None],
        timeout: float,
    ) -> None:
        self._params = params
        self._exchange = exchange
        self._queue = queue
        self._on_message = on_message
        self._timeout = timeout
        self._bound: set[str] = set()  # task ids bound besides the reply address
        self._connection: LeanConnection | None = None
        self._connected = asyncio.Event()
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def open(self) -> None:
        """Connect, declare, bind and consume within the timeout (raises BrokerConnectionError)."""
        timeout = self._timeout
        connection = await LeanConnection.open(self._params, self._on_message, self._on_lost, timeout=timeout)
        try:
            await connection.rpc(
                Exchange.Declare(exchange=self._exchange, exchange_type="direct", durable=True),
                Exchange.DeclareOk,
                timeout=timeout,
            )
            await connection.rpc(
                Queue.Declare(queue=self._queue, exclusive=True, auto_delete=True),
                Queue.DeclareOk,
                timeout=timeout,
            )
            for key in (self._queue, *self._bound):
                await connection.rpc(
                    Queue.Bind(queue=self._queue, exchange=self._exchange, routing_key=key),
                    Queue.BindOk,
                    timeout=timeout,
                )
            await connection.consume(self._queue, _CONSUMER_TAG, timeout=timeout, no_ack=True)
        except BaseException:
            connection.abort()
            raise
        if self._closed:
            connection.abort()
            raise BrokerConnectionError("the rpc:// backend was closed")
        self._connection = connection
        self._connected.set()

    async def connected(self) -> LeanConnection:
        """The live connection, once there is one (a reconnect may be under way)."""
        while True:
            connection = self._connection
            if connection is not None and not connection.is_closed:
                return connection
            if self._closed:
                raise BrokerConnectionError("the rpc:// backend was closed")
            await self._connected.wait()

    async def bind(self, key: str) -> None:
        """Route records published with ``key`` here too, now and after every reconnect."""
        self._bound.add(key)
        connection = await self.connected()
        await connection.rpc(
            Queue.Bind(queue=self._queue, exchange=self._exchange, routing_key=key),
            Queue.BindOk,
            timeout=self._timeout,
        )

    async def unbind(self, key: str) -> None:
        self._bound.discard(key)
        connection = self._connection
        if connection is None or connection.is_closed:
            return  # the binding went with the queue
        await connection.rpc(
            Queue.Unbind(queue=self._queue, exchange=self._exchange, routing_key=key),
            Queue.UnbindOk,
            timeout=self._timeout,
        )

    def forget(self, key: str) -> None:
        """Do not bind ``key`` again after a reconnect (the caller failed to bind it)."""
        self._bound.discard(key)

    def _on_lost(self, error: BaseException) -> None:
        if self._closed or self._connection is None:
            return  # a lost opening (or a failed reconnect attempt) is the opener's business
        self._connection = None
        self._connected.clear()
        # INFO: what it costs (records published meanwhile) is warned about where it happens.
        log.info("rpc:// reply connection to RabbitMQ lost (%s); reconnecting", error)
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(
                self._reconnect(), name="asyncq.rpc.lean-reconnect"
            )

    async def _reconnect(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._params.reconnect_interval)
            if self._closed:
                return
            try:
                await self.open()
            except (BrokerError, OSError, TimeoutError) as exc:
                log.debug("reconnecting the rpc:// reply queue failed: %s", exc)
                continue
            except Exception:
                log.exception("reconnecting the rpc:// reply queue failed unexpectedly")
                continue
            log.info("rpc:// reply queue reconnected to RabbitMQ")
            return

    async def close(self) -> None:
        """Close for good; never raises."""
        self._closed = True
        self._connected.set()  # waiters wake and find it closed
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(BaseException):
                await self._reconnecting
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close(timeout=_CLOSE_TIMEOUT)
