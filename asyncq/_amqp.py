"""aio-pika plumbing shared by the RabbitMQ broker and rpc://: deadlines, exits, acks.

Two aio-pika behaviours are guarded here:

* ``connect_robust`` has no overall deadline: against a port where something else listens
  the AMQP handshake waits forever, and a cancelled ``connect_robust`` leaves its
  reconnection task running. :func:`open_robust` builds the connection itself, bounds the
  connect, closes it on failure and says what answered at the address.
* The reconnection task swallows a cancellation that arrives during a connect attempt
  ("Reconnecting after N seconds"), so ``asyncio.run`` leaving without closing the
  connection waited on it for ever. Each connection gets a guard task: when the guard is
  cancelled (``asyncio.run`` cancels every task on its way out), it marks the connection
  closed and cancels the reconnection task again, which then ends.

It also holds :class:`CopyGuard` and :func:`ack_confirmed`, which keep the RabbitMQ broker's
publish-then-ack settlements from forking a message.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import weakref
from typing import Any, Final, cast
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.connection import make_url

from asyncq._connect import describe_peer
from asyncq._utils import redact_url
from asyncq.exceptions import AsyncqError

__all__ = ["CopyGuard", "ack_confirmed", "close_robust", "open_robust"]

log = logging.getLogger(__name__)

#: The probe sent after a connect timed out: a line-based server (Redis, HTTP, SMTP) answers
#: it with an error, an AMQP server with its protocol header (8 bytes, not a valid header).
_AMQP_HELLO: Final = b"AMQP\r\n\r\n"

_AMQP_ANSWERS: Final = ("it speaks something else (got b'AMQP", "it speaks something else (got b'\\x01")

#: Seconds closing a connection may take before it is abandoned.
CLOSE_TIMEOUT: Final = 5.0

_GUARDS: dict[int, asyncio.Task[None]] = {}


def _drop_duplicate_connect_error(record: logging.LogRecord) -> bool:
    # aiormq logs every failed connect attempt at ERROR; the first connect raises our own
    # one-line error and aio-pika warns about each reconnect attempt, so it only repeats them.
    return record.msg != "error when creating transport: %r"


logging.getLogger("aiormq.connection").addFilter(_drop_duplicate_connect_error)


async def open_robust(
    client_url: str,
    shown_url: str,
    *,
    connection_name: str,
    timeout: float,
    error: type[AsyncqError],
    what: str = "RabbitMQ",
) -> AbstractRobustConnection:
    """Open a robust connection within ``timeout`` seconds, or raise ``error`` in one line.

    ``shown_url`` is the URL as configured (its password is redacted in the message).
    """
    connection = aio_pika.RobustConnection(
        make_url(client_url), client_properties={"connection_name": connection_name}
    )
    _guard(connection)
    try:
        async with asyncio.timeout(timeout):
            await connection.connect()
    except BaseException as exc:
        await close_robust(connection)
        if not isinstance(exc, Exception):
            raise
        parts = urlsplit(client_url)
        host = parts.hostname or "localhost"
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        shown = redact_url(shown_url)
        if isinstance(exc, TimeoutError):
            answer = await describe_peer(host, port, _AMQP_HELLO)
            if answer.startswith(_AMQP_ANSWERS):
                answer = "an AMQP server answered but did not finish the handshake"
            raise error(
                f"no AMQP server answered at {host}:{port} within {timeout:g}s: {answer} ({what} URL {shown})"
            ) from None
        reason = "connection refused" if _is_refused(exc) else f"{exc}"
        raise error(f"cannot connect to {what} at {host}:{port}: {reason} (URL {shown})") from exc
    return connection


def _is_refused(exc: BaseException) -> bool:
    # aiormq wraps the socket error as AMQPConnectionError(errno, message).
    return isinstance(exc, ConnectionRefusedError) or bool(exc.args and exc.args[0] == errno.ECONNREFUSED)


async def close_robust(connection: AbstractRobustConnection) -> None:
    """Close ``connection`` (reconnection included) within CLOSE_TIMEOUT; never raises."""
    guard = _GUARDS.pop(id(connection), None)
    if guard is not None:
        guard.cancel()
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await connection.close()
    except Exception:  # closing is best effort: the server drops what we leave behind
        log.debug("closing the RabbitMQ connection failed", exc_info=True)
        _stop_reconnecting(connection)


def _reconnection_task(connection: Any) -> asyncio.Task[Any] | None:
    task = getattr(connection, "_RobustConnection__reconnection_task", None)
    return task if isinstance(task, asyncio.Task) else None


def _stop_reconnecting(connection: Any) -> None:
    connection._close_called = True  # aio-pika re-raises a cancellation once this is set
    task = _reconnection_task(connection)
    if task is not None and not task.done():
        task.cancel()


def _guard(connection: AbstractRobustConnection) -> None:
    key = id(connection)

    async def watch() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if _GUARDS.get(key) is task:
                _GUARDS.pop(key, None)
                _stop_reconnecting(connection)
            raise

    task = asyncio.get_running_loop().create_task(watch(), name="asyncq.amqp.exit-guard")
    _GUARDS[key] = task


async def ack_confirmed(message: AbstractIncomingMessage, timeout: float) -> None:
    """basic.ack ``message``, returning once RabbitMQ has processed the ack.

    AMQP acks have no reply, and aiormq's ``wait=False`` only queues the frame; a synchronous
    method on the same channel is answered after every earlier frame of that channel, the
    ack included, so its reply confirms the ack (a passive declare of ``amq.direct`` changes
    nothing). Concurrent callers on one channel share one such round trip.
    """
    if message.delivery_tag is None:
        return
    channel = cast(aiormq.Channel, message.channel)
    await channel.basic_ack(delivery_tag=message.delivery_tag, wait=False)
    sync = _SYNCS.get(channel)
    if sync is None:
        sync = _SYNCS[channel] = _ChannelSync(channel)
    async with asyncio.timeout(timeout):
        await sync.after_queued_frames()


class _ChannelSync:
    """One synchronous round trip on a channel for every caller waiting when it is sent."""

    def __init__(self, channel: aiormq.Channel) -> None:
        self._channel = channel
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    def after_queued_frames(self) -> asyncio.Future[None]:
        """A future done once the server has processed every frame queued on the channel so far."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append(future)
        if self._task is None:
            self._task = loop.create_task(self._run(), name="asyncq.amqp.ack-sync")
        return future

    async def _run(self) -> None:
        batch: list[asyncio.Future[None]] = []
        try:
            while self._waiters:
                # Taken before the round trip is sent: each waiter's frames precede it.
                batch, self._waiters = self._waiters, []
                try:
                    await self._channel.exchange_declare("amq.direct", exchange_type="direct", passive=True)
                except Exception as exc:
                    for future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._task = None
            for future in (*batch, *self._waiters):  # cancelled: nobody will answer them
                if not future.done():
                    future.cancel()
            self._waiters = []


_SYNCS: weakref.WeakKeyDictionary[aiormq.Channel, _ChannelSync] = weakref.WeakKeyDictionary()


class CopyGuard:
    """Keeps a re-published message from forking into two live copies.

    Settling by re-publishing (retries, delays, redelivery counting, dead-lettering) sends
    the copy, then acks the original. Until the ack is processed, both exist; if the process
    dies then, RabbitMQ delivers the original again and it is copied again. Two rules close
    that window:

    * While a re-publish is between "copy sent" and "original's ack confirmed", this
      process hands out no delivery (:meth:`wait_idle`): a copy that kills its worker cannot
      start before the ack that retires its original has reached the server.
    * Each original that was copied is remembered (message id and incarnation header), so
      if its ack is lost anyway (a connection drop) and it comes back here, it is acked and
      dropped instead of run or copied again (:meth:`was_copied`).
    """

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._active: set[asyncio.Future[None]] = set()
        self._copied: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()

    @staticmethod
    def incarnation(message: AbstractIncomingMessage, header: str) -> tuple[str, str]:
        """What names this copy of a message: its id and the copy id asyncq gave it, if any."""
        copy_id = message.headers.get(header)
        return message.message_id or "", copy_id if isinstance(copy_id, str) else ""

    def begin(self) -> asyncio.Future[None]:
        """A re-publish starts; pass the token to :meth:`end` when its original is acked (or it failed)."""
        token: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._active.add(token)
        return token

    def end(self, token: asyncio.Future[None]) -> None:
        """The re-publish of ``token`` is over."""
        self._active.discard(token)
        if not token.done():
            token.set_result(None)

    async def wait_idle(self) -> None:
        """Return once every re-publish begun so far is over.

        Only those begun so far: a copy reaches the buffer after its re-publish began, and
        re-publishes begun later cannot hold back this delivery (no starvation under a
        steady stream of retries and hops).
        """
        if self._active:
            # asyncio.wait, not gather: a cancelled waiter must not cancel the tokens.
            await asyncio.wait(set(self._active))

    def copied(self, key: tuple[str, str]) -> None:
        """Remember that the incarnation ``key`` now has a copy in a queue."""
        self._copied[key] = None
        self._copied.move_to_end(key)
        while len(self._copied) > self._size:
            self._copied.popitem(last=False)

    def was_copied(self, key: tuple[str, str]) -> bool:
        """Whether this process already copied the incarnation ``key`` (it is a leftover)."""
        return key in self._copied
