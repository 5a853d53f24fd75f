"""The Flask example, served for real by werkzeug and called over HTTP with a real client.

The Flask views send with the sync API to a worker run by the test. (The FastAPI and aiohttp
examples have their own modules: test_fastapi.py, test_aiohttp.py.)
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import pytest

import asyncq.sync

TIMEOUT = 30.0


async def add_and_read(base: str) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client:
        response = await client.post("/add", params={"x": 2, "y": 3})
        response.raise_for_status()
        task_id = response.json()["id"]
        response = await client.get(f"/results/{task_id}")
        response.raise_for_status()
        body: dict[str, object] = response.json()
        assert body["id"] == task_id
        return body


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
