"""aiohttp with asyncq: enqueue from handlers, await results, read a task's state by id.

Run it with the worker inside the web server's event loop (the default)::

    python examples/aiohttp_app.py --port 8080
    curl -X POST 'localhost:8080/add?x=2&y=3'          # {"task_id": "...", "sum": 5}

or with workers of their own (``--no-worker``, then ``asyncq run examples.aiohttp_app:queue``).
The broker and backend come from ``ASYNCQ_BROKER_URL`` / ``ASYNCQ_RESULT_BACKEND``; unset,
the embedded SQLite store is used.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from aiohttp import web

from asyncq import App
from asyncq.contrib.aiohttp import get_app, get_worker, setup
from asyncq.exceptions import TimeoutError as ResultTimeout

queue = App("aiohttp-example")


# Explicit names: a worker importing this module and the script (``__main__``) agree on them.
@queue.task(name="example.add")
async def add(x: int, y: int) -> int:
    """Add two numbers on a worker."""
    return x + y


@queue.task(name="example.slow_add")
async def slow_add(x: int, y: int, seconds: float = 0.2) -> int:
    """Add two numbers after a pause: a job that a client polls for."""
    await asyncio.sleep(seconds)
    return x + y


def _ints(request: web.Request, *names: str) -> list[int]:
    try:
        return [int(request.query[name]) for name in names]
    except (KeyError, ValueError):
        raise web.HTTPBadRequest(text=f"query parameters {', '.join(names)} must be integers") from None


async def health(request: web.Request) -> web.Response:
    """The app's name and whether this server runs a worker."""
    worker = get_worker(request)
    return web.json_response(
        {"app": get_app(request).main, "embedded_worker": worker is not None and worker.ready.is_set()}
    )


async def enqueue_and_wait(request: web.Request) -> web.Response:
    """Send ``add`` and answer with its result."""
    x, y = _ints(request, "x", "y")
    result = await add.enqueue(x, y)
    try:
        return web.json_response({"task_id": result.id, "sum": await result.get(timeout=30)})
    except ResultTimeout:
        raise web.HTTPGatewayTimeout(text=f"task {result.id} is still running") from None


async def enqueue_job(request: web.Request) -> web.Response:
    """Send ``slow_add`` and answer at once with its id."""
    x, y = _ints(request, "x", "y")
    result = await slow_add.enqueue(x, y, float(request.query.get("seconds", 0.2)))
    return web.json_response({"task_id": result.id}, status=202)


async def job_state(request: web.Request) -> web.Response:
    """The state of a task, and its result once it has succeeded."""
    task_id = request.match_info["task_id"]
    result = get_app(request).AsyncResult(task_id)
    state = await result.state()
    body: dict[str, Any] = {"task_id": task_id, "state": str(state)}
    if state == "SUCCESS":
        body["result"] = await result.get(timeout=5)
    return web.json_response(body)


def create_app(*, embedded_worker: bool = True) -> web.Application:
    """The web application; ``embedded_worker`` runs a worker in the server's event loop."""
    web_app = web.Application()
    setup(web_app, queue, worker={"concurrency": 100} if embedded_worker else False)
    web_app.router.add_get("/health", health)
    web_app.router.add_post("/add", enqueue_and_wait)
    web_app.router.add_post("/jobs/slow-add", enqueue_job)
    web_app.router.add_get("/jobs/{task_id}", job_state)
    return web_app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--no-worker", action="store_true", help="do not run a worker in the server")
    args = parser.parse_args()
    web.run_app(create_app(embedded_worker=not args.no_worker), host=args.host, port=args.port)
