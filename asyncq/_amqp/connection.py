"""Opening and closing aio-pika robust connections: deadlines and clean exits.

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
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any, Final
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.connection import make_url

from asyncq._amqp.protocol import HandshakeTimeout
from asyncq._connect import describe_peer
from asyncq._utils import redact_url
from asyncq.exceptions import AsyncqError

__all__ = ["CLOSE_TIMEOUT", "close_robust", "connect_error", "open_robust"]

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
        failure = await connect_error(exc, client_url, shown_url, timeout=timeout, error=error, what=what)
        if isinstance(exc, TimeoutError):
            raise failure from None
        raise failure from exc
    return connection


async def connect_error(
    exc: Exception,
    client_url: str,
    shown_url: str,
    *,
    timeout: float,
    error: type[AsyncqError],
    what: str = "RabbitMQ",
) -> AsyncqError:
    """The one-line error for a first connect that failed with ``exc`` (aio-pika's or asyncq's own).

    A connect that timed out probes the address to say what answered there instead.
    """
    parts = urlsplit(client_url)
    host = parts.hostname or "localhost"
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    shown = redact_url(shown_url)
    if isinstance(exc, TimeoutError | HandshakeTimeout):
        answer = await describe_peer(host, port, _AMQP_HELLO)
        if answer.startswith(_AMQP_ANSWERS):
            answer = "an AMQP server answered but did not finish the handshake"
        return error(
            f"no AMQP server answered at {host}:{port} within {timeout:g}s: {answer} ({what} URL {shown})"
        )
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc  # the lean client wraps it
    reason = "connection refused" if _is_refused(cause) else f"{cause}"
    return error(f"cannot connect to {what} at {host}:{port}: {reason} (URL {shown})")


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
