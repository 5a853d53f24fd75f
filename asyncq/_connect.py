"""Connect deadlines shared by the network drivers.

Owns the default of ``broker_connection_timeout``, how the App hands it to the built-in
drivers (their ``connect_timeout`` option), URL redaction for messages, and the one-line
account of what answered at an address when a connect did not finish in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

from asyncq.exceptions import ConfigurationError

__all__ = [
    "CONNECT_TIMEOUT_SCHEMES",
    "DEFAULT_CONNECT_TIMEOUT",
    "connect_timeout_value",
    "describe_peer",
    "is_unreachable",
    "with_connect_timeout",
]

#: Seconds a driver's connect may take, handshake included (``broker_connection_timeout``).
DEFAULT_CONNECT_TIMEOUT: Final = 10.0

#: Schemes of the built-in drivers that take the ``connect_timeout`` option. Other drivers
#: (third-party ones included) are left alone: they may refuse options they do not know.
CONNECT_TIMEOUT_SCHEMES: Final = frozenset(
    {"redis", "rediss", "redis+cluster", "rediss+cluster", "redis+sentinel", "amqp", "amqps", "rpc", "sqlite"}
    | {"postgresql", "postgres", "mysql", "mariadb", "sqs", "kafka"}
)

#: Connect failures of an address where nothing listens yet (besides ConnectionError's).
_UNREACHABLE_ERRNOS: Final = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
)

#: The longest a probe of "what answered" waits for each of its steps.
_PROBE_TIMEOUT: Final = 1.0


def with_connect_timeout(url: str, options: Mapping[str, Any], timeout: float | None) -> dict[str, Any]:
    """``options`` plus ``connect_timeout=timeout`` for a built-in network driver of ``url``.

    An explicit ``connect_timeout`` (keyword or URL query) wins; ``timeout=None`` adds nothing.
    """
    merged = dict(options)
    if timeout is None or "connect_timeout" in merged:
        return merged
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme.lower() not in CONNECT_TIMEOUT_SCHEMES:
        return merged
    if any(key == "connect_timeout" for key, _ in parse_qsl(parts.query)):
        return merged
    merged["connect_timeout"] = timeout
    return merged


def connect_timeout_value(value: object) -> float:
    """``value`` as a connect deadline in seconds (> 0), or a clear ConfigurationError."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigurationError(f"connect_timeout={value!r} is not a number of seconds") from None
    if isinstance(value, bool) or not seconds > 0:
        raise ConfigurationError(f"connect_timeout={value!r} must be a number of seconds > 0")
    return seconds


async def describe_peer(
    host: str, port: int, hello: bytes, *, expected: tuple[str, Callable[[bytes], bool]] | None = None
) -> str:
    """What answers at ``host:port`` when sent ``hello``, as a clause for an error message.

    Used after a connect timed out, to tell a wrong port (another protocol answers) from a
    silent or unreachable host. ``expected`` names the driver's protocol and recognises its
    reply to ``hello``: a right server that is merely slow (busy, rebalancing) is then not
    taken for another protocol. Every step has its own short deadline.
    """
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:
        return "nothing accepted a TCP connection (host down or firewalled?)"
    except OSError as exc:
        return f"cannot open a TCP connection ({exc.strerror or exc})"
    data: bytes | None
    try:
        writer.write(hello)
        async with asyncio.timeout(_PROBE_TIMEOUT):
            data = await reader.read(64)
    except TimeoutError:
        data = None
    except OSError:
        data = b""
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_PROBE_TIMEOUT):
                await writer.wait_closed()
    if data is None:
        return "a server accepted the connection but sent nothing back"
    if not data:
        return "a server accepted the connection and closed it without a word"
    if expected is not None and expected[1](data):
        return f"a {expected[0]} server answers there, but the call did not finish in time"
    return f"it speaks something else (got {data[:48]!r})"


def is_unreachable(exc: BaseException) -> bool:
    """Whether a failed connect found nothing listening yet (worth trying again later).

    True when the error's chain holds a refused or reset connection, an unroutable address or
    an unresolved host name: what a server still starting (or a container not yet up) gives.
    A timeout, a TLS failure, a refused login or a server speaking another protocol is not:
    waiting will not mend a wrong URL.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | socket.gaierror) or (
            isinstance(current, OSError) and current.errno in _UNREACHABLE_ERRNOS
        ):
            return True
        current = current.__cause__ or current.__context__
    return False
