"""aiohttp: a ``cleanup_ctx`` that opens the app and embeds a worker, and the key to find the App.

::

    from aiohttp import web
    from asyncq.contrib.aiohttp import ASYNCQ_APP, setup

    web_app = web.Application()
    setup(web_app, app)                                   # worker=False: producer only

    async def enqueue(request: web.Request) -> web.Response:
        result = await request.app[ASYNCQ_APP].send_task("tasks.add", (1, 2))
        return web.json_response({"id": result.id})
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from asyncq.app import App
from asyncq.sync import run_blocking_calls_on

__all__ = ["ASYNCQ_APP", "setup"]

#: Where :func:`setup` puts the App: ``request.app[ASYNCQ_APP]``.
ASYNCQ_APP: web.AppKey[App] = web.AppKey("asyncq", App)


def setup(web_app: web.Application, app: App, *, worker: bool = True, **worker_options: Any) -> None:
    """Connect ``app`` while ``web_app`` runs, and (``worker=True``) run a worker in its loop.

    The worker stops, finishing what it runs, at the web app's cleanup.
    """
    web_app[ASYNCQ_APP] = app

    async def context(_: web.Application) -> AsyncIterator[None]:
        await app.connect()
        if app.broker_url.startswith("memory:"):
            run_blocking_calls_on(app, asyncio.get_running_loop())  # sync views reach its queues
        try:
            if worker:
                async with app.worker(**worker_options):
                    yield
            else:
                yield
        finally:
            run_blocking_calls_on(app, None)
            await app.aclose()

    web_app.cleanup_ctx.append(context)
