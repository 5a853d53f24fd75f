"""The framework examples, served for real: uvicorn (FastAPI), aiohttp's server, werkzeug (Flask).

Each is called over HTTP with a real client; FastAPI and aiohttp embed the worker in their
lifespan / cleanup context, the Flask views send with the sync API to a worker run by the test.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import httpx
import pytest

import asyncq.sync
from asyncq import App

TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def add_and_read(base: str, path: str = "/add") -> dict[str, object]:
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client:
        response = await client.post(path, params={"x": 2, "y": 3})
        response.raise_for_status()
        task_id = response.json()["id"]
        response = await client.get(f"/results/{task_id}")
        response.raise_for_status()
        body: dict[str, object] = response.json()
        assert body["id"] == task_id
        return body


async def test_fastapi_example_under_uvicorn() -> None:
    uvicorn = pytest.importorskip("uvicorn")
    from examples.fastapi_app import create_api

    port = free_port()
    api = create_api(App("fastapi-test", broker="memory://"))
    config = uvicorn.Config(api, port=port, log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.started:
                await asyncio.sleep(0.02)  # uvicorn has no started event to wait on
        body = await add_and_read(f"http://127.0.0.1:{port}")
        assert (body["state"], body["result"]) == ("SUCCESS", 5)
        # A sync endpoint (FastAPI's thread pool) sends with delay() to the same memory queues.
        body = await add_and_read(f"http://127.0.0.1:{port}", "/add-sync")
        assert (body["state"], body["result"]) == ("SUCCESS", 5)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, TIMEOUT)


async def test_aiohttp_example() -> None:
    web = pytest.importorskip("aiohttp.web")
    from examples.aiohttp_app import create_web_app

    runner = web.AppRunner(create_web_app(App("aiohttp-test", broker="memory://")))
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        body = await add_and_read(f"http://127.0.0.1:{port}")
        assert (body["state"], body["result"]) == ("SUCCESS", 5)
    finally:
        await runner.cleanup()


async def test_flask_example_sends_with_the_sync_api_and_runs_in_the_app_context(tmp_path: Path) -> None:
    pytest.importorskip("flask")
    from werkzeug.serving import make_server

    from examples.flask_app import create_app, queue

    flask_app = create_app({"ASYNCQ_BROKER_URL": f"sqlite:///{tmp_path / 'flask.db'}"})
    server = make_server("127.0.0.1", 0, flask_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="flask-test-server", daemon=True)
    thread.start()
    try:
        async with queue.app.worker(concurrency=4):
            body = await add_and_read(f"http://127.0.0.1:{server.port}")
        assert (body["state"], body["result"], body["app"]) == ("SUCCESS", 5, "flask_example")
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        await asyncio.to_thread(asyncq.sync.close_app, queue.app)
        await queue.app.aclose()
