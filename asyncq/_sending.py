"""Sending a message whose record will come to this process: the confirm raced with the record."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["publish_until_confirmed_or_arrived"]


async def publish_until_confirmed_or_arrived(
    publish: Coroutine[Any, Any, None], arrival: asyncio.Future[None]
) -> None:
    """Await ``publish`` unless a record of the message arrives first: it evidently arrived.

    The publish (its confirm, its retries) is then abandoned: sending it again would run the
    task twice.
    """
    task = asyncio.get_running_loop().create_task(publish, name="asyncq.publish")

    def abandon(_: asyncio.Future[None]) -> None:
        if not task.done():
            task.cancel()

    arrival.add_done_callback(abandon)
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        came = arrival.done() and not arrival.cancelled()
        if not came or (current is not None and current.cancelling()):
            raise  # the caller itself was cancelled
    finally:
        arrival.remove_done_callback(abandon)
        arrival.cancel()  # no-op if it came; the backend forgets it
