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

    The publish (its confirm wait, its retries) is then abandoned: sending it again would run
    the task twice. As ``asyncio.timeout`` does, the record's arrival cancels this task and the
    cancellation is taken back here, so a publish that does not wait (no confirms) costs no
    task and no loop iteration.
    """
    task = asyncio.current_task()
    assert task is not None
    came = False
    waiting = True

    def abandon(done: asyncio.Future[None]) -> None:
        nonlocal came
        if waiting and not done.cancelled():
            came = True
            task.cancel()

    arrival.add_done_callback(abandon)
    try:
        await publish
    except asyncio.CancelledError:
        if came and task.uncancel() == 0:
            return  # our cancellation alone: the record came first
        raise
    finally:
        waiting = False
        arrival.remove_done_callback(abandon)
        arrival.cancel()  # no-op if it came; the backend forgets it
