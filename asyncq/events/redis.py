"""``redis://`` event bus: a capped stream ``<prefix>:events`` (XADD MAXLEN ~), read with XREAD BLOCK.

The stream gives readers a bounded, durable history: a dashboard that starts late, or a tail
that reconnects, reads what it missed from the entries still kept. Works the same on one
server, a Cluster (one key, one slot) and a Sentinel-managed master (:class:`asyncq._redis.Client`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from asyncq._redis import CONNECTION_OPTIONS, ClientHolder, Option, Script, plain_prefix, translate_error
from asyncq._resp import pack_commands
from asyncq.exceptions import BrokerConnectionError, BrokerError

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

__all__ = ["RedisEventBus"]

logger = logging.getLogger(__name__)

#: Options this bus reads from the broker's (the others belong to the broker and are ignored).
OPTIONS: Final[dict[str, Option]] = {
    "key_prefix": Option(str, "asyncq", "first part of the stream's key, as the broker's"),
    "retry_timeout": Option(float, 10.0, "seconds a publish keeps reconnecting before it fails"),
}

#: Longest one XREAD blocks before asking again (a wait, not a poll: new entries end it at once).
BLOCK_SECONDS: Final = 5.0
#: Loaded at connect, so that Client.open makes a round trip (and fails now if Redis is away).
_HELLO: Final = Script.build("events_hello", "return 1")
#: Pause before a reader reconnects after Redis failed.
RECONNECT_DELAY: Final = 1.0


def _entries(reply: Any) -> list[tuple[bytes, bytes]]:
    """(id, batch) pairs of an XREAD / XRANGE reply, RESP2 (lists) or RESP3 (maps)."""
    if reply is None:
        return []
    streams = list(reply.values()) if isinstance(reply, Mapping) else [item[1] for item in reply]
    found = []
    for entries in streams:
        for entry_id, fields in entries:
            pairs = dict(zip(fields[::2], fields[1::2], strict=True)) if isinstance(fields, list) else fields
            batch = pairs.get(b"b")
            if batch is not None:
                found.append((entry_id, batch))
    return found


class _RedisReader:
    __slots__ = ("_bus", "_closed", "_conn", "_last", "_pending")

    def __init__(self, bus: RedisEventBus, last: bytes) -> None:
        self._bus, self._last, self._closed = bus, last, False
        self._pending: list[bytes] = []
        self._conn: AbstractConnection | None = None

    def __aiter__(self) -> _RedisReader:
        return self

    async def __anext__(self) -> bytes:
        while not self._pending:
            if self._closed or not self._bus._redis.connected:
                raise StopAsyncIteration
            try:
                reply = await self._xread()
            except BrokerError as exc:
                logger.warning("reading events failed (%s); reconnecting in %.1fs", exc, RECONNECT_DELAY)
                await self._disconnect()
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            entries = _entries(reply)
            if entries:
                self._last = entries[-1][0]
                self._pending = [batch for _, batch in entries]
        return self._pending.pop(0)

    async def _xread(self) -> Any:
        client = self._bus._redis.client()
        if self._conn is None:
            self._conn = client.dedicated_connection(self._bus.key, name_suffix=":events")
        conn = self._conn
        command = (
            "XREAD",
            "COUNT",
            500,
            "BLOCK",
            int(BLOCK_SECONDS * 1000),
            "STREAMS",
            self._bus.key,
            self._last,
        )
        try:
            # Our own deadline on top of BLOCK's: a half-open connection must not hang the reader.
            async with asyncio.timeout(BLOCK_SECONDS + 5.0):
                if not conn.is_connected:
                    await conn.connect()  # type: ignore[no-untyped-call]
                await conn.send_packed_command(pack_commands([command]), check_health=False)
                return await conn.read_response(timeout=math.inf)
        except Exception as exc:
            raise translate_error(exc, "read events", BrokerConnectionError, BrokerError) from exc

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect()

    async def aclose(self) -> None:
        self._closed = True
        await self._disconnect()


class RedisEventBus:
    """Event batches in the stream ``<key_prefix>:events``: about ``history_limit`` kept, and
    about ``history_bytes`` of them at most (None: no byte cap)."""

    keeps_history = True

    def __init__(
        self, url: str, *, history_limit: int = 10_000, history_bytes: int | None = None, **options: Any
    ) -> None:
        self.url = url
        own = {
            name: value for name, value in options.items() if name in OPTIONS or name in CONNECTION_OPTIONS
        }
        self._redis = ClientHolder(
            url,
            own,
            OPTIONS,
            what="Redis event bus",
            client_name="asyncq-events",
            scripts=(_HELLO,),
            connection_error=BrokerConnectionError,
            error=BrokerError,
            log=logger,
        )
        prefix = plain_prefix(self._redis.settings["key_prefix"])
        self.key = f"{prefix}:events".encode()
        self.history_limit = max(1, int(history_limit))
        self.history_bytes = None if history_bytes is None else max(1, int(history_bytes))

    async def connect(self) -> None:
        await self._redis.connect()

    async def aclose(self) -> None:
        await self._redis.aclose()

    def keep(self, size: int) -> int:
        """Entries the stream keeps after adding a batch of ``size`` bytes.

        The byte cap counts the kept batches as the size of the newest: a run of large batches
        shortens the stream, and the large ones a run of small ones keeps had shortened it
        themselves, so the stream holds a small multiple of ``history_bytes`` at most (a length
        cap alone lets 10,000 batches of a busy worker, 100 KB each, take a gigabyte).
        """
        if self.history_bytes is None:
            return self.history_limit
        return max(1, min(self.history_limit, self.history_bytes // max(1, size)))

    async def publish(self, batch: bytes) -> None:
        keep = self.keep(len(batch))
        # A retry after a lost reply may add the batch twice; readers see events at least once.
        await self._redis.retrying(
            "publish events",
            lambda client: client.execute("XADD", self.key, "MAXLEN", "~", keep, "*", "b", batch),
        )

    async def subscribe(self, *, history: bool = False) -> _RedisReader:
        await self.connect()
        if history:
            return _RedisReader(self, b"0-0")
        newest = await self._redis.retrying(
            "subscribe to events", lambda client: client.execute("XREVRANGE", self.key, "+", "-", "COUNT", 1)
        )
        return _RedisReader(self, newest[0][0] if newest else b"0-0")
