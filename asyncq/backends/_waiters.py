"""The ``wait()`` calls in progress in one process, for backends that poll for results.

A polling backend (mysql://, sqlite://) registers each wait's future here before its first
read, resolves it from its own ``set()`` or from its poller, and wakes them all on close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class ResultWaiters:
    """The futures of the waits in progress, by task id."""

    def __init__(self) -> None:
        self._by_id: dict[str, list[asyncio.Future[bytes | None]]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._by_id

    def waited(self) -> list[str]:
        """The task ids somebody waits for now."""
        return [task_id for task_id, futures in self._by_id.items() if futures]

    def wake(self, task_id: str, record: bytes | None) -> None:
        for future in self._by_id.get(task_id, ()):
            if not future.done():
                future.set_result(record)

    def wake_all(self) -> None:
        """Every wait returns ``None`` (the backend is closing)."""
        for futures in self._by_id.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)
        self._by_id.clear()

    async def wait(
        self,
        task_id: str,
        timeout: float | None,
        read: Callable[[], Awaitable[bytes | None]],
        poll: Callable[[], None],
    ) -> bytes | None:
        """The final record of ``task_id``: ``read()`` once, then ``poll()`` and wait to be woken."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        future: asyncio.Future[bytes | None] = loop.create_future()
        # Registered before the first read: a set() in this process landing during the read
        # still resolves the future, and the poller then covers other processes.
        waiters = self._by_id.setdefault(task_id, [])
        waiters.append(future)
        try:
            # The first read always completes, so that timeout=0 means "if final already".
            record = await read()
            if record is not None and not future.done():
                future.set_result(record)
            elif not future.done():
                poll()
            async with asyncio.timeout_at(deadline):
                return await future
        except TimeoutError:
            return None
        finally:
            with contextlib.suppress(ValueError):
                waiters.remove(future)
            if not waiters and self._by_id.get(task_id) is waiters:
                del self._by_id[task_id]
