"""One multiplexed Redis connection: concurrent callers pipeline over one socket.

Redis answers the commands of one connection in the order it received them, so a caller
needs no connection of its own: it writes its (pre-packed) commands at once and waits for
its replies, which are matched by position. There is no pool checkout, no lock and no
reader task in between: replies are parsed by hiredis in the protocol's ``data_received``
and hand their waiters the result directly. This is the hot path of both Redis drivers
(publish, claim, ack, result writes); on loopback a round trip costs about half of what it
costs through redis-py's pooled connections.

Blocking commands (BLPOP, WAIT) and subscriptions must not go here: they would hold up
every caller behind them. :class:`asyncq._redis.Client` keeps those on connections of
their own.

A waiter that gives up (a timeout, a cancellation) leaves its slot in the queue; its reply
is read and dropped when it comes, so the others stay matched. Any failure of the socket
fails every waiter with a ``ConnectionError``: whether their commands were applied is
unknown, exactly as for a dropped pooled connection.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, Final, cast

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:
    import hiredis
except ImportError:  # pragma: no cover - redis[hiredis] brings it; without it the pool path is used
    hiredis = None  # type: ignore[assignment]

#: Whether multiplexed connections can be made here (they parse replies with hiredis).
AVAILABLE = hiredis is not None

try:  # redis-py's mapping of error replies to its exception classes (NOSCRIPT, LOADING, ...)
    from redis._parsers.base import BaseParser as _Parser
except ImportError:  # pragma: no cover - older or newer redis-py layouts
    _Parser = None  # type: ignore[assignment,misc]


def _parse_error(response: str) -> ResponseError:
    if _Parser is None:  # pragma: no cover
        return ResponseError(response)
    error: ResponseError = _Parser.parse_error(response)  # type: ignore[no-untyped-call]
    return error


__all__ = ["AVAILABLE", "Multiplexed", "open_multiplexed", "pack_commands"]

#: Bytes buffered in the kernel-facing write buffer before writers wait for it to drain.
_HIGH_WATER = 4 * 1024 * 1024


#: The "$<length>" headers of the bulk strings up to 1 KiB long, made once: formatting one per
#: argument was most of the cost of packing a flush of results and acks.
_BULK_HEADERS: Final = tuple(b"$%d" % size for size in range(1024))


def pack_commands(commands: Sequence[tuple[Any, ...]]) -> bytes:
    """RESP-encode ``commands`` (arguments: bytes, str, int or float) into one buffer.

    Does what redis-py's ``pack_command`` does for the argument types the drivers send, at a
    fraction of its cost: with thousands of results and acks a second, packing was the
    largest single cost of a flush.
    """
    # Every part is followed by CRLF: the parts are joined by it, the empty last one ends it.
    parts: list[bytes] = []
    append = parts.append
    headers = _BULK_HEADERS
    for command in commands:
        append(b"*%d" % len(command))
        for arg in command:
            kind = type(arg)  # exact types first: an identity test, not an isinstance call
            if kind is bytes:
                data = arg
            elif kind is str:
                data = arg.encode()
            elif kind is int:
                data = b"%d" % arg
            else:
                data = _encode_other(arg)
            size = len(data)
            append(headers[size] if size < 1024 else b"$%d" % size)
            append(data)
    append(b"")
    return b"\r\n".join(parts)


def _encode_other(arg: Any) -> bytes:
    if isinstance(arg, bytes | bytearray | memoryview):
        return bytes(arg)
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, int) and not isinstance(arg, bool):
        return b"%d" % arg
    if isinstance(arg, float):
        return repr(arg).encode()
    raise TypeError(f"cannot send a {type(arg).__name__} to Redis: {arg!r}")


class _ReplyError(Exception):
    """What hiredis makes of an error reply; turned into redis-py's class for it."""


class _Pending:
    """The replies one call waits for, and when it was sent (loop time)."""

    __slots__ = ("future", "remaining", "replies", "sent")

    def __init__(self, future: asyncio.Future[list[Any]], count: int, sent: float) -> None:
        self.future = future
        self.remaining = count
        self.replies: list[Any] = []
        self.sent = sent


class Multiplexed(asyncio.Protocol):
    """The protocol side of a multiplexed connection; :meth:`call` is the whole API.

    ``timeout``: seconds the oldest unanswered call may wait before the connection counts as
    dead (half-open, or a server that stopped answering) and every caller on it fails with a
    ``TimeoutError`` from redis-py, a connection error. One timer per connection enforces it,
    not one per call.
    """

    def __init__(self, name: str, timeout: float | None = None) -> None:
        self.name = name
        self._timeout = timeout
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(replyError=_ReplyError)
        self._pending: deque[_Pending] = deque()
        self._transport: asyncio.Transport | None = None
        self._failure: BaseException | None = None
        self._paused = False
        self._resumed: asyncio.Future[None] | None = None

    @property
    def usable(self) -> bool:
        """True while the socket is open and nothing has failed on it."""
        return self._failure is None and self._transport is not None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RedisConnectionError(f"Redis protocol error on {self.name}: {exc}"))
                return
            if reply is False:
                return
            if isinstance(reply, _ReplyError):
                reply = _parse_error(str(reply))
            if not pending:  # a reply nobody asked for: the stream can no longer be matched
                self._fail(RedisConnectionError(f"unexpected reply from Redis on {self.name}: {reply!r}"))
                return
            waiting = pending[0]
            waiting.replies.append(reply)
            waiting.remaining -= 1
            if waiting.remaining == 0:
                pending.popleft()
                if not waiting.future.done():  # else its caller gave up: drop the replies
                    waiting.future.set_result(waiting.replies)

    def eof_received(self) -> bool | None:
        self._fail(RedisConnectionError(f"Redis closed the connection {self.name}"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection {self.name} to Redis lost: {exc or 'closed'}"))
        self._transport = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_result(None)

    # -- calls ---------------------------------------------------------------------------------

    async def call(self, packed: bytes, count: int) -> list[Any]:
        """Send ``count`` pre-packed commands; return their replies (error replies in place)."""
        if self._paused and self._failure is None:
            if self._resumed is None:
                self._resumed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._resumed)
        if self._failure is not None or self._transport is None:
            raise RedisConnectionError(f"connection {self.name} to Redis is closed") from self._failure
        loop = self._loop
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._pending.append(_Pending(future, count, loop.time()))
        self._transport.write(packed)
        if self._watchdog is None and self._timeout is not None:
            self._watchdog = loop.call_later(self._timeout, self._check_deadline)
        return await future

    def _check_deadline(self) -> None:
        self._watchdog = None
        if not self._pending or self._timeout is None:
            return  # armed again by the next call
        overdue = self._loop.time() - self._pending[0].sent - self._timeout
        if overdue >= 0:
            self._fail(RedisTimeoutError(f"no reply from Redis on {self.name} within {self._timeout}s"))
        else:
            self._watchdog = self._loop.call_later(-overdue, self._check_deadline)

    def close(self) -> None:
        """Close the socket; every waiter fails with a ConnectionError."""
        self._fail(RedisConnectionError(f"connection {self.name} to Redis was closed"))

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        pending, self._pending = self._pending, deque()
        for waiting in pending:
            if not waiting.future.done():
                waiting.future.set_exception(exc)
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_exception(exc)
        if self._transport is not None:
            self._transport.close()


async def open_multiplexed(
    host: str,
    port: int,
    *,
    name: str,
    db: int = 0,
    username: str | None = None,
    password: str | None = None,
    client_name: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    keepalive: bool = True,
    timeout: float | None = None,
) -> Multiplexed:
    """Connect, authenticate, select ``db`` and name the connection; raise what Redis refused.

    The caller bounds the time this takes (``asyncio.timeout``); ``timeout`` then bounds
    each call's wait for its reply (see :class:`Multiplexed`).
    """
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: Multiplexed(name, timeout),
        host,
        port,
        ssl=ssl_context,
    )
    try:
        transport = protocol._transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small requests go out now
            if keepalive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        commands: list[tuple[Any, ...]] = []
        if password is not None:
            commands.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            commands.append(("SELECT", db))
        if client_name:
            commands.append(("CLIENT", "SETNAME", client_name))
        if commands:
            for reply in await protocol.call(pack_commands(commands), len(commands)):
                if isinstance(reply, Exception):
                    raise reply
    except BaseException:
        protocol.close()
        raise
    return protocol
