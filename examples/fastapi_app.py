"""FastAPI with asyncq: enqueue from routes, await results, read a task's state by id.

Run it with the worker inside the web server's event loop (the default)::

    python examples/fastapi_app.py --port 8000
    curl -X POST 'localhost:8000/add?x=2&y=3'          # {"task_id": "...", "sum": 5}

or with workers of their own (the usual production layout)::

    EXAMPLE_EMBEDDED_WORKER=0 uvicorn examples.fastapi_app:api --port 8000
    asyncq run examples.fastapi_app:queue

The broker and backend come from ``ASYNCQ_BROKER_URL`` / ``ASYNCQ_RESULT_BACKEND`` (for example
``redis://127.0.0.1:6379/0``); unset, the embedded SQLite store is used, which serves every
process on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from asyncq import App
from asyncq.contrib.fastapi import AsyncqApp, get_worker, lifespan
from asyncq.exceptions import TimeoutError as ResultTimeout

queue = App("fastapi-example")


# Tasks carry explicit names so that a worker importing this module and a server started as a
# script (module ``__main__``) agree on them.
@queue.task(name="example.add")
async def add(x: int, y: int) -> int:
    """Add two numbers on a worker."""
    return x + y


@queue.task(name="example.slow_add")
async def slow_add(x: int, y: int, seconds: float = 0.2) -> int:
    """Add two numbers after a pause: a job that a client polls for."""
    await asyncio.sleep(seconds)
    return x + y


def create_api(*, embedded_worker: bool) -> FastAPI:
    """The web application; ``embedded_worker`` runs a worker in the server's event loop."""
    api = FastAPI(lifespan=lifespan(queue, worker={"concurrency": 100} if embedded_worker else False))

    @api.get("/health")
    async def health(request: Request, app: AsyncqApp) -> dict[str, Any]:
        worker = get_worker(request)
        return {"app": app.main, "embedded_worker": worker is not None and worker.ready.is_set()}

    @api.post("/add")
    async def enqueue_and_wait(x: int, y: int) -> dict[str, Any]:
        result = await add.enqueue(x, y)
        try:
            return {"task_id": result.id, "sum": await result.get(timeout=30)}
        except ResultTimeout:
            raise HTTPException(status_code=504, detail=f"task {result.id} is still running") from None

    @api.post("/add-sync")
    def enqueue_and_wait_sync(x: int, y: int) -> dict[str, Any]:
        # A plain `def` route runs in FastAPI's thread pool, where the blocking sync API works.
        result = add.delay(x, y)
        return {"task_id": result.id, "sum": result.get(timeout=30)}

    @api.post("/jobs/slow-add", status_code=202)
    async def enqueue_job(x: int, y: int, seconds: float = 0.2) -> dict[str, str]:
        result = await slow_add.enqueue(x, y, seconds)
        return {"task_id": result.id}

    @api.get("/jobs/{task_id}")
    async def job_state(task_id: str, app: AsyncqApp) -> dict[str, Any]:
        result = app.AsyncResult(task_id)
        state = await result.state()
        body: dict[str, Any] = {"task_id": task_id, "state": str(state)}
        if state == "SUCCESS":
            body["result"] = await result.get(timeout=5)
        return body

    return api


api = create_api(embedded_worker=os.environ.get("EXAMPLE_EMBEDDED_WORKER", "1") != "0")


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(api, host=args.host, port=args.port)
