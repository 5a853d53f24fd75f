"""Both ends of a unique task's lock: taken before its message is published, given back when it is done.

The lock holds the task id. A second enqueue of the same key while the lock is held publishes
nothing and gets a handle on the holder's task. Retries publish the same id again, so they
keep the lock; the worker gives it back once the task has finished for good (success, final
failure, revoke, expiry, dead letter), and the TTL bounds it if that never happens.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from asyncq.exceptions import AsyncqError
from asyncq.unique.spec import UNIQUE_HEADER
from asyncq.unique.store import lock_store_for

if TYPE_CHECKING:
    from asyncq.app import App
    from asyncq.message import Message
    from asyncq.result import AsyncResult

__all__ = ["release_unique", "send_unique"]

logger = logging.getLogger(__name__)


async def send_unique(
    app: App, message: Message, handle: AsyncResult[Any], key: str, ttl: float, *, connection: Any = None
) -> AsyncResult[Any]:
    """Publish ``message`` if it takes the lock ``key``; else point ``handle`` at the holder's task."""
    await app.connect()
    store = lock_store_for(app.broker)
    holder = await store.acquire(key, message.id, ttl)
    if holder != message.id:
        logger.debug("task %s[%s] is queued or running already (unique key %r)", message.task, holder, key)
        handle.id = holder
        return handle
    message.headers = {**message.headers, UNIQUE_HEADER: key}
    try:
        await app.send_message(message, task_name=handle.task_name, connection=connection)
    except BaseException:
        await store.release(key, message.id)  # nothing was queued: the next enqueue may try again
        raise
    return handle


async def release_unique(broker: Any, message: Message) -> None:
    """Give back the lock of a finished unique task's message (a no-op for other messages)."""
    key = message.headers.get(UNIQUE_HEADER)
    if not isinstance(key, str):
        return
    try:
        await lock_store_for(broker).release(key, message.id)
    except AsyncqError:  # the TTL frees it in the end; the task's outcome is already recorded
        logger.exception("could not release the unique lock %r of task %s[%s]", key, message.task, message.id)
