"""An aiohttp service that enqueues tasks and reads their results, with a worker in the same process.

Run it with ``python -m examples.aiohttp_app`` (the broker is ``ASYNCQ_BROKER_URL``, else the
embedded SQLite store), then::

    curl -X POST 'http://127.0.0.1:8080/add?x=2&y=3'       # {"id": "..."}
    curl http://127.0.0.1:8080/results/<id>                # {"id": ..., "state": "SUCCESS", "result": 5}
"""

from __future__ import annotations

from aiohttp import web

from asyncq import App
from asyncq.contrib.aiohttp import ASYNCQ_APP, setup


def create_web_app(app: App) -> web.Application:
    """The web app over ``app``: its cleanup context connects ``app`` and runs a worker."""

    @app.task(name="examples.aiohttp.add")
    async def add(x: int, y: int) -> int:
        return x + y

    async def enqueue_add(request: web.Request) -> web.Response:
        result = await add.enqueue(int(request.query["x"]), int(request.query["y"]))
        return web.json_response({"id": result.id})

    async def read_result(request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        result = request.app[ASYNCQ_APP].AsyncResult(task_id)
        value = await result.get(timeout=10)
        return web.json_response({"id": task_id, "state": str(await result.state()), "result": value})

    web_app = web.Application()
    web_app.add_routes([web.post("/add", enqueue_add), web.get("/results/{task_id}", read_result)])
    setup(web_app, app, concurrency=10)
    return web_app


if __name__ == "__main__":
    web.run_app(create_web_app(App("aiohttp-example")), host="127.0.0.1", port=8080)
