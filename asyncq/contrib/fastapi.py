"""FastAPI integration: a lifespan that opens the app (optionally running a worker) and a dependency.

::

    from asyncq.contrib.fastapi import AsyncqApp, lifespan

    api = FastAPI(lifespan=lifespan(queue, worker=True))

    @api.post("/add")
    async def add_route(x: int, y: int, queue: AsyncqApp) -> dict[str, int]:
        result = await queue.send_task("tasks.add", (x, y))
        return {"sum": await result.get(timeout=10)}

The lifespan connects the broker and backend on the server's event loop at start-up (an
unreachable broker fails the start-up, not the first request), runs an embedded worker when
asked, and on shutdown stops that worker gracefully and closes the connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

from asyncq.app import App
from asyncq.exceptions import ConfigurationError, MissingDependencyError
from asyncq.sync import run_blocking_calls_on
from asyncq.worker.worker import Worker

try:
    from fastapi import Depends
    from starlette.requests import HTTPConnection
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError.for_extra(exc.name or "fastapi", "fastapi") from exc

__all__ = ["STATE_KEY", "WORKER_STATE_KEY", "AsyncqApp", "get_app", "get_worker", "lifespan"]

#: The lifespan-state key under which routes find the App (``request.state.asyncq``).
STATE_KEY = "asyncq"
#: The lifespan-state key of the embedded worker, when one runs.
WORKER_STATE_KEY = "asyncq_worker"

Lifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]


def lifespan(
    queue: App,
    *,
    worker: bool | Mapping[str, Any] = False,
    wraps: Lifespan | None = None,
) -> Callable[[Any], AbstractAsyncContextManager[dict[str, Any]]]:
    """A FastAPI/Starlette lifespan that opens ``queue`` for the server's lifetime.

    Args:
        queue: the asyncq App the routes send to.
        worker: ``True`` runs a worker of ``queue`` in the server's event loop; a mapping
            runs one with those :class:`~asyncq.worker.worker.Worker` options
            (``{"queues": ["web"], "concurrency": 200}``). Every server process runs its own.
        wraps: the application's own lifespan, entered after asyncq is open (so it can
            enqueue at start-up) and left before asyncq closes; the state it yields is kept.
    """
    if not isinstance(worker, bool | Mapping):
        raise ConfigurationError(f"worker must be a bool or a mapping of Worker options, not {worker!r}")
    options = dict(worker) if isinstance(worker, Mapping) else {}
    run_worker = bool(worker) or isinstance(worker, Mapping)

    @asynccontextmanager
    async def context(api: Any) -> AsyncIterator[dict[str, Any]]:
        state: dict[str, Any] = {STATE_KEY: queue}
        await queue.connect()
        if queue.broker_url.startswith("memory:"):
            # memory:// queues belong to this loop: blocking calls of sync routes must run here.
            run_blocking_calls_on(queue, asyncio.get_running_loop())
        try:
            if run_worker:
                async with queue.worker(**options) as embedded:
                    state[WORKER_STATE_KEY] = embedded
                    async with _wrapped(wraps, api, state) as full_state:
                        yield full_state
            else:
                async with _wrapped(wraps, api, state) as full_state:
                    yield full_state
        finally:
            run_blocking_calls_on(queue, None)
            await queue.aclose()

    return context


@asynccontextmanager
async def _wrapped(inner: Lifespan | None, api: Any, state: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    if inner is None:
        yield state
        return
    async with inner(api) as inner_state:
        yield {**state, **(inner_state or {})}


def get_app(connection: HTTPConnection) -> App:
    """The App opened by :func:`lifespan` (a dependency: ``queue: App = Depends(get_app)``)."""
    queue = getattr(connection.state, STATE_KEY, None)
    if queue is None:
        raise ConfigurationError(
            "no asyncq app in the lifespan state; create the application with "
            "FastAPI(lifespan=asyncq.contrib.fastapi.lifespan(app))"
        )
    if not isinstance(queue, App):
        raise ConfigurationError(f"the lifespan state's {STATE_KEY!r} is {queue!r}, not an asyncq App")
    return queue


def get_worker(connection: HTTPConnection) -> Worker | None:
    """The embedded worker of :func:`lifespan`, or None when the server runs none."""
    return getattr(connection.state, WORKER_STATE_KEY, None)


#: A route parameter annotated ``queue: AsyncqApp`` receives the App.
AsyncqApp = Annotated[App, Depends(get_app)]
