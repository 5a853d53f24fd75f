"""FastAPI (and any Starlette app): a lifespan that opens the app and embeds a worker, and a dependency.

::

    from fastapi import Depends, FastAPI
    from asyncq.contrib.fastapi import asyncq_lifespan, get_asyncq

    api = FastAPI(lifespan=asyncq_lifespan(app))               # worker=False: producer only

    @api.post("/add")
    async def enqueue(x: int, y: int, queue: App = Depends(get_asyncq)) -> dict[str, str]:
        result = await add.enqueue(x, y)
        return {"id": result.id}

See docs/frameworks.md. The lifespan suits any Starlette-based framework.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

# Imported at run time: FastAPI reads the dependency's annotation to know it wants the request.
from starlette.requests import HTTPConnection

from asyncq.app import App
from asyncq.sync import run_blocking_calls_on

__all__ = ["asyncq_lifespan", "get_asyncq"]


def asyncq_lifespan(
    app: App, *, worker: bool = True, **worker_options: Any
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A ``lifespan=`` for FastAPI/Starlette: connect ``app`` (and run a worker) while serving.

    The App is put on ``request.app.state.asyncq`` for :func:`get_asyncq`. With ``worker=True``
    a worker (``app.worker(**worker_options)``) runs in the server's event loop and stops,
    finishing what it runs, when the server shuts down.
    """

    @contextlib.asynccontextmanager
    async def lifespan(web_app: Any) -> AsyncIterator[None]:
        web_app.state.asyncq = app
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

    return lifespan


def get_asyncq(request: HTTPConnection) -> App:
    """A FastAPI dependency: the App that :func:`asyncq_lifespan` put on the web app."""
    try:
        app: App = request.app.state.asyncq
    except AttributeError:
        raise RuntimeError("no asyncq App on this web app: pass lifespan=asyncq_lifespan(app)") from None
    return app
