"""One connection holder for every Redis driver: its URL options, its Client, connected once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from asyncq._redis.client import Client
from asyncq._redis.options import Option, parse_options
from asyncq._redis.scripts import Script
from asyncq.exceptions import AsyncqError

__all__ = ["ClientHolder"]

T = TypeVar("T")


class ClientHolder:
    """What a Redis driver (broker, result backend, control channel, event bus) connects with.

    Parses the driver's URL and options (``settings`` are the driver's own, defaults filled
    in; ``retry_timeout`` must be one of them), refuses bad connection options at once, opens
    one :class:`Client` on the first :meth:`connect` (concurrent callers share it) and runs
    the driver's calls on it: retried where safe to repeat, once where not, errors translated
    to ``connection_error`` / ``error``.
    """

    def __init__(
        self,
        url: str,
        options: Mapping[str, Any],
        known: Mapping[str, Option],
        *,
        what: str,
        client_name: str,
        scripts: Sequence[Script],
        connection_error: type[AsyncqError],
        error: type[AsyncqError],
        log: logging.Logger,
    ) -> None:
        self.target, self.settings, self.connection = parse_options(url, options, known, what=what)
        self.what = what
        self.client_name = client_name
        self.scripts = tuple(scripts)
        self.retry_timeout: float = self.settings["retry_timeout"]
        self._connection_error = connection_error
        self._error = error
        self._log = log
        self._client: Client | None = None
        self._lock = asyncio.Lock()
        self.new_client()  # refuses bad connection options now, not at the first connect

    def __repr__(self) -> str:
        return f"<ClientHolder {self.what} {self.target.url!r}>"

    def new_client(self) -> Client:
        """A Client for this driver's deployment, not connected yet."""
        return Client(
            self.target,
            self.connection,
            client_name=self.client_name,
            retry_timeout=self.retry_timeout,
            connection_error=self._connection_error,
            error=self._error,
            log=self._log,
        )

    @property
    def connected(self) -> bool:
        return self._client is not None

    def client(self) -> Client:
        """The connected Client; raises the driver's error if :meth:`connect` was not called."""
        client = self._client
        if client is None:
            raise self._error(f"the {self.what} is not connected; call connect() first")
        return client

    async def connect(self) -> Client:
        """Open the Client and load the scripts; idempotent."""
        async with self._lock:
            if self._client is None:
                client = self.new_client()
                await client.open(self.scripts)
                self._client = client
            return self._client

    async def ensure(self) -> Client:
        """The Client, connecting first if needed."""
        client = self._client
        if client is None:
            client = await self.connect()
        return client

    async def aclose(self) -> None:
        """Close the Client; a later :meth:`connect` opens a new one."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def retrying(self, what: str, op: Callable[[Client], Awaitable[T]]) -> T:
        """Run ``op`` (safe to repeat) on the connected Client, riding out reconnects."""
        client = self.client()
        return await client.retrying(what, lambda: op(client))

    async def once(self, what: str, op: Callable[[Client], Awaitable[T]]) -> T:
        """Run ``op`` (unsafe to repeat, or not worth waiting for) once, within the command timeout."""
        client = self.client()
        return await client.once(what, lambda: op(client))

    async def run(self, what: str, script: Script, keys: Sequence[bytes], args: Sequence[Any]) -> Any:
        """Run one script (safe to repeat), loading the driver's scripts if Redis forgot them."""
        scripts = self.scripts
        return await self.retrying(what, lambda client: client.eval(script, keys, args, scripts))

    async def pipeline(
        self, what: str, calls: Sequence[tuple[Any, ...]], *, replicate: bool = False, retry: bool = True
    ) -> list[Any]:
        """Send ``calls`` in one round trip, retried (``retry``, for calls safe to repeat) or once."""
        scripts = self.scripts
        if retry:
            return await self.retrying(
                what, lambda client: client.pipeline(calls, scripts, replicate=replicate)
            )
        return await self.once(what, lambda client: client.pipeline(calls, scripts, replicate=replicate))
