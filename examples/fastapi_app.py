"""A FastAPI service that enqueues tasks and reads their results, with a worker in the same process.

Run it with ``uvicorn examples.fastapi_app:api`` (the broker is ``ASYNCQ_BROKER_URL``, else the
embedded SQLite store), then::

    curl -X POST 'http://127.0.0.1:8000/add?x=2&y=3'       # {"id": "..."}
    curl http://127.0.0.1:8000/results/<id>                # {"id": ..., "state": "SUCCESS", "result": 5}
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI

from asyncq import App
from asyncq.contrib.fastapi import asyncq_lifespan, get_asyncq

#: The dependency that gives a view the App (at module level: FastAPI resolves annotations here).
Queue = Annotated[App, Depends(get_asyncq)]


def create_api(app: App) -> FastAPI:
    """The web app over ``app``: its lifespan connects ``app`` and runs a worker."""

    @app.task(name="examples.fastapi.add")
    async def add(x: int, y: int) -> int:
        return x + y

    api = FastAPI(lifespan=asyncq_lifespan(app, concurrency=10))

    @api.post("/add")
    async def enqueue_add(x: int, y: int, queue: Queue) -> dict[str, str]:
        result = await add.enqueue(x, y)
        return {"id": result.id}

    @api.post("/add-sync")
    def enqueue_add_sync(x: int, y: int) -> dict[str, str]:
        # A plain `def` endpoint runs in FastAPI's thread pool: the sync API works there.
        return {"id": add.delay(x, y).id}

    @api.get("/results/{task_id}")
    async def read_result(task_id: str, queue: Queue) -> dict[str, Any]:
        result = queue.AsyncResult(task_id)
        value = await result.get(timeout=10)
        return {"id": task_id, "state": str(await result.state()), "result": value}

    return api


api = create_api(App("fastapi-example"))
