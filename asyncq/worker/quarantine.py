"""Isolation for suspect messages: where a crash can be blamed on one message alone.

A message delivered again after its worker was lost is a *suspect*: it may be the one that
killed the worker, or an innocent bystander that happened to be in flight. This module owns
the two places a suspect can run so that a crash during it is its own:

* the **sandbox**, a small :class:`~asyncq.worker.procpool.ProcessPool` whose children each
  run one suspect at a time (async tasks get their own event loop there). A child that dies
  is replaced and the worker lives on, so the caller can count one isolated crash for that
  message and try again in a fresh child;
* the **gate**, for a task the sandbox cannot import by reference (defined in ``__main__``, a
  closure, a test function): the task runs in the worker with nothing else running.

The rule built on these (how crashes are counted, when a message is dead-lettered) lives in
:mod:`asyncq.worker.suspects`; docs/worker.md describes it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from asyncq.request import Request, _current

if TYPE_CHECKING:
    from asyncq.task import Task

__all__ = ["IsolationGate", "SandboxImportError", "sandbox_ref"]

#: The Request fields that travel to a child process (the rest are bound to the parent's loop).
REQUEST_FIELDS = (
    "id",
    "task",
    "args",
    "kwargs",
    "retries",
    "eta",
    "expires",
    "headers",
    "delivery_info",
    "root_id",
    "parent_id",
    "group_id",
    "hostname",
)


class SandboxImportError(Exception):
    """The sandbox child could not import the task by reference (the worker runs it itself)."""


def sandbox_ref(task: Task[Any, Any]) -> str | None:
    """Return ``"module:qualname"`` if a child process can import ``task`` by it, else None."""
    module = getattr(task, "__module__", None)
    qualname = getattr(task, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<locals>" in qualname:
        return None
    from asyncq._utils import import_string

    ref = f"{module}:{qualname}"
    try:
        found = import_string(ref)
    except Exception:  # any import failure means "not by reference"
        return None
    return ref if found is task else None


def request_fields(request: Request) -> dict[str, Any]:
    """The picklable part of ``request``, to rebuild it in a child process."""
    return {name: getattr(request, name) for name in REQUEST_FIELDS}


def run_suspect(ref: str, args: list[Any], kwargs: dict[str, Any], fields: dict[str, Any]) -> Any:
    """Sandbox-child entry: import the task by reference and run it to the end, whatever its kind."""
    from asyncq._utils import import_string

    try:
        task = import_string(ref)
    except Exception as exc:
        raise SandboxImportError(f"cannot import {ref} in the sandbox: {exc!r}") from None
    token = _current.set((task, Request(**fields)))
    try:
        result = task._invoke(args, kwargs)
        if inspect.isawaitable(result):
            # An async task gets a loop of its own; asyncio.run copies the context, so
            # current_task() works inside it.
            result = asyncio.run(_awaited(result))
        return result
    finally:
        _current.reset(token)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class IsolationGate:
    """A shared/exclusive gate: ordinary tasks pass together; an exclusive run waits for them all.

    While an exclusive run waits or runs, no new ordinary task starts, so a crash during it
    is its own. Passing the open gate costs one comparison (it is on every task's path).
    """

    def __init__(self) -> None:
        self._shared = 0
        self._exclusive = 0  # exclusive runs waiting or running
        self._open = asyncio.Event()
        self._open.set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._one_at_a_time = asyncio.Lock()

    @property
    def is_open(self) -> bool:
        """True when an ordinary task may start at once."""
        return self._exclusive == 0

    def enter_open(self) -> None:
        """Pass the gate while :attr:`is_open`; pair with :meth:`leave`."""
        self._shared += 1
        if self._shared == 1:  # _drained is clear already while others pass
            self._drained.clear()

    async def enter(self) -> None:
        """Pass the gate as an ordinary task, waiting while an exclusive run is pending."""
        while self._exclusive:
            await self._open.wait()
        self.enter_open()

    def leave(self) -> None:
        """An ordinary task is done."""
        self._shared -= 1
        if self._shared == 0:
            self._drained.set()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Run the body with no ordinary task running (waiting for those in flight to end)."""
        self._exclusive += 1
        self._open.clear()
        try:
            async with self._one_at_a_time:
                while self._shared:
                    await self._drained.wait()
                yield
        finally:
            self._exclusive -= 1
            if self._exclusive == 0:
                self._open.set()
