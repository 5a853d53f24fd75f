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
    try:
        await asyncio.wait((task, arrival), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        arrival.cancel()  # no-op if it came
    if arrival.done() and not arrival.cancelled():
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a late failure of a message that ran is moot
        else:
            task.cancel()
        return
    task.result()  # the publish's error, if any, is the caller's
