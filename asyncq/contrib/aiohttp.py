"""aiohttp integration: a ``cleanup_ctx`` that opens the app (optionally running a worker) for the server.

::

    from asyncq.contrib.aiohttp import get_app, setup

    web_app = web.Application()
    setup(web_app, queue, worker=True)

    async def add_route(request: web.Request) -> web.Response:
        result = await add.enqueue(2, 3)
        return web.json_response({"sum": await result.get(timeout=10)})

At start-up the broker and backend are connected on the server's event loop (an unreachable
broker fails the start-up, not the first request) and, when asked, a worker starts in that
loop; at cleanup the worker stops gracefully and the connections close.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from asyncq.app import App
from asyncq.exceptions import ConfigurationError, MissingDependencyError
from asyncq.sync import run_blocking_calls_on
from asyncq.worker.worker import Worker

try:
    from aiohttp import web
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError.for_extra(exc.name or "aiohttp", "aiohttp") from exc

__all__ = ["APP_KEY", "WORKER_KEY", "get_app", "get_worker", "setup"]

#: Where the App is stored on the aiohttp application (``request.config_dict[APP_KEY]``).
APP_KEY: web.AppKey[App] = web.AppKey("asyncq_app", App)
#: Where the embedded worker is stored while it runs.
WORKER_KEY: web.AppKey[Worker] = web.AppKey("asyncq_worker", Worker)


def setup(web_app: web.Application, queue: App, *, worker: bool | Mapping[str, Any] = False) -> None:
    """Open ``queue`` for the lifetime of ``web_app`` (appended to its ``cleanup_ctx``).

    Args:
        web_app: the aiohttp application (sub-applications find the App through
            ``request.config_dict``).
        queue: the asyncq App the handlers send to.
        worker: ``True`` runs a worker of ``queue`` in the server's event loop; a mapping
            runs one with those :class:`~asyncq.worker.worker.Worker` options. Every server
            process runs its own.
    """
    if not isinstance(worker, bool | Mapping):
        raise ConfigurationError(f"worker must be a bool or a mapping of Worker options, not {worker!r}")
    if APP_KEY in web_app:
        raise ConfigurationError(f"asyncq is already set up on {web_app!r}")
    options = dict(worker) if isinstance(worker, Mapping) else {}
    run_worker = bool(worker) or isinstance(worker, Mapping)
    web_app[APP_KEY] = queue

    async def asyncq_context(app: web.Application) -> AsyncIterator[None]:
        await queue.connect()
        if queue.broker_url.startswith("memory:"):
            # memory:// queues belong to this loop: blocking calls from other threads must run here.
            run_blocking_calls_on(queue, asyncio.get_running_loop())
        try:
            if run_worker:
                async with queue.worker(**options) as embedded:
                    app[WORKER_KEY] = embedded
                    yield
            else:
                yield
        finally:
            run_blocking_calls_on(queue, None)
            await queue.aclose()

    web_app.cleanup_ctx.append(asyncq_context)


def get_app(request: web.Request) -> App:
    """The App set up with :func:`setup` on this application or one that contains it."""
    try:
        return request.config_dict[APP_KEY]
    except KeyError:
        raise ConfigurationError(
            "asyncq is not set up on this aiohttp application; call asyncq.contrib.aiohttp.setup(app, queue)"
        ) from None


def get_worker(request: web.Request) -> Worker | None:
    """The embedded worker started by :func:`setup`, or None when the server runs none."""
    return request.config_dict.get(WORKER_KEY)
