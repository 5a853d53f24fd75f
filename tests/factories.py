"""One helper for driver fixtures: make connected drivers, close them all, then clean up.

Conformance and integration fixtures differ only in how a driver is built and what is left on
the server afterwards (a key prefix, a schema, tables, queues); the rest is here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar


class Connectable(Protocol):
    async def connect(self) -> None: ...

    async def aclose(self) -> None: ...


D = TypeVar("D", bound=Connectable)


@asynccontextmanager
async def connected(
    build: Callable[..., D],
    cleanup: Callable[[list[D]], Awaitable[None]] | None = None,
) -> AsyncIterator[Callable[..., Awaitable[D]]]:
    """Yield ``make(**options)``, which builds a driver with ``build`` and connects it.

    On exit every driver made is closed, then ``cleanup(made)`` removes what they left behind.
    """
    made: list[D] = []

    async def make(**options: Any) -> D:
        driver = build(**options)
        await driver.connect()
        made.append(driver)
        return driver

    try:
        yield make
    finally:
        for driver in made:
            await driver.aclose()
        if cleanup is not None:
            await cleanup(made)
