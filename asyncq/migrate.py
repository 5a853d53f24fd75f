"""``asyncq migrate``: create or upgrade the tables of drivers that keep a versioned schema.

Drivers with tables (postgresql://) create and upgrade them on first connect too; running
this at deploy time does it once, up front, with a role allowed to run DDL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from asyncq.app import App

__all__ = ["SchemaOwner", "migrate", "report"]


@runtime_checkable
class SchemaOwner(Protocol):
    """A driver whose tables carry a schema version."""

    async def migrate(self) -> list[int]:
        """Apply the missing schema versions (connecting if needed); return those applied."""

    async def aclose(self) -> None:
        """Release the driver's connections."""


async def migrate(app: App) -> dict[str, list[int] | None]:
    """Migrate ``app``'s broker and result backend: role -> versions applied (None: no schema)."""
    done: dict[str, list[int] | None] = {}
    drivers: list[tuple[str, object]] = [("broker", app.broker), ("result backend", app.backend)]
    if app.outbox is not None:
        drivers.append(("outbox", app.outbox))
    for role, driver in drivers:
        if not isinstance(driver, SchemaOwner):
            done[role] = None
            continue
        try:
            done[role] = await driver.migrate()
        finally:
            await driver.aclose()
    return done


def report(app: App, done: dict[str, list[int] | None]) -> list[str]:
    """One line per driver of what :func:`migrate` did, as ``asyncq migrate`` prints it."""
    lines = []
    for role, applied in done.items():
        url = {"broker": app.broker_url, "outbox": app.conf.outbox_url}.get(role) or app.backend_url
        scheme = url.partition(":")[0]
        if applied is None:
            lines.append(f"{role}: {scheme}:// keeps no schema, nothing to migrate")
        elif applied:
            lines.append(f"{role}: schema migrated to version {applied[-1]}")
        else:
            lines.append(f"{role}: schema up to date")
    return lines
