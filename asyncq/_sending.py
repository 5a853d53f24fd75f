"""Sending a message whose record will come to this process: the confirm raced with the record."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Arrival", "publish_until_confirmed_or_arrived"]


class Arrival(asyncio.Future[None]):
    """A backend's ``arrival()`` future whose sender hears of the record at once.

    A done callback runs a loop iteration after ``set_result``; the sender's hook set here
    runs inside it, so the publish is abandoned in the iteration the record came in.
    """

    _on_arrival: Callable[[], None] | None = None

    def set_result(self, result: None) -> None:
        super().set_result(result)
        hook, self._on_arrival = self._on_arrival, None
        if hook is not None:
            hook()


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

    def abandon_now() -> None:
        nonlocal came
        if waiting:
            came = True
            task.cancel()

    def abandon(done: asyncio.Future[None]) -> None:
        if not done.cancelled():
            abandon_now()

    hooked = arrival if isinstance(arrival, Arrival) else None
    if hooked is not None:
        hooked._on_arrival = abandon_now
    else:
        arrival.add_done_callback(abandon)
    try:
        await publish
    except asyncio.CancelledError:
        if came and task.uncancel() == 0:
            return  # our cancellation alone: the record came first
        raise
    finally:
        waiting = False
        if hooked is not None:
            hooked._on_arrival = None
        else:
            arrival.remove_done_callback(abandon)
        arrival.cancel()  # no-op if it came; the backend forgets it
