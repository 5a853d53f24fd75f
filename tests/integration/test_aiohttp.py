"""The aiohttp example served by aiohttp's own runner on a free port, called over HTTP, on the real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from asyncq import App
from asyncq.contrib.aiohttp import get_app, setup
from asyncq.exceptions import ConfigurationError
from examples import aiohttp_app as example
from tests.helpers import delete_prefix, unique_prefix, until
from tests.services import require_service

pytestmark = pytest.mark.redis


@pytest.fixture
async def redis_app() -> AsyncIterator[App]:
    """The example's App pointed at the shared Redis under a key prefix of its own."""
    base = require_service("redis")
    prefix = unique_prefix()
    url = f"{base}?key_prefix={prefix}"
    example.queue.conf.update(broker_url=url, result_backend=url)
    yield example.queue
    await example.queue.aclose()
    await delete_prefix(base, prefix)


async def serve(web_app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(web_app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()  # port 0: the OS picks a free one
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def check_routes(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        response = await client.post("/add", params={"x": 2, "y": 40})
        assert response.status_code == 200, response.text
        assert response.json()["sum"] == 42

        response = await client.post("/add", params={"x": "two"})
        assert response.status_code == 400
        assert "must be integers" in response.text

        response = await client.post("/jobs/slow-add", params={"x": 1, "y": 2, "seconds": 0.1})
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]

        async def finished() -> bool:
            body = (await client.get(f"/jobs/{task_id}")).json()
            return body["state"] == "SUCCESS" and body["result"] == 3

        await until(finished, timeout=60)


async def test_handlers_with_the_worker_in_cleanup_ctx(redis_app: App) -> None:
    runner, base = await serve(example.create_app(embedded_worker=True))
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            health = (await client.get("/health")).json()
        assert health == {"app": "aiohttp-example", "embedded_worker": True}
        await check_routes(base)
    finally:
        await runner.cleanup()  # the cleanup_ctx stops the worker and closes the drivers
    # After cleanup this loop holds no open drivers: a fresh connect opens new ones.
    assert not redis_app._current_drivers().connected


async def test_handlers_with_a_worker_elsewhere(redis_app: App) -> None:
    runner, base = await serve(example.create_app(embedded_worker=False))
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            assert (await client.get("/health")).json()["embedded_worker"] is False
            task_id = (await client.post("/jobs/slow-add", params={"x": 5, "y": 5})).json()["task_id"]
            assert (await client.get(f"/jobs/{task_id}")).json()["state"] == "PENDING"
            # A worker that is not part of the web application picks the job up from Redis.
            async with redis_app.worker(concurrency=4):

                async def done() -> bool:
                    return (await client.get(f"/jobs/{task_id}")).json().get("result") == 10

                await until(done, timeout=60)
                await check_routes(base)
    finally:
        await runner.cleanup()


async def test_sub_applications_find_the_app_of_their_parent(redis_app: App) -> None:
    async def name(request: web.Request) -> web.Response:
        return web.json_response({"app": get_app(request).main})

    async def missing(request: web.Request) -> web.Response:
        try:
            get_app(request)
        except ConfigurationError as exc:
            return web.Response(text=str(exc), status=500)
        raise AssertionError("get_app found an app that was never set up")

    parent = web.Application()
    setup(parent, redis_app)
    child = web.Application()
    child.router.add_get("/name", name)
    parent.add_subapp("/child", child)
    runner, base = await serve(parent)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            assert (await client.get("/child/name")).json() == {"app": "aiohttp-example"}
    finally:
        await runner.cleanup()

    bare = web.Application()
    bare.router.add_get("/missing", missing)
    runner, base = await serve(bare)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            response = await client.get("/missing")
        assert response.status_code == 500
        assert "call asyncq.contrib.aiohttp.setup(app, queue)" in response.text
    finally:
        await runner.cleanup()


def test_setup_refuses_bad_options_and_a_second_app() -> None:
    web_app = web.Application()
    with pytest.raises(ConfigurationError, match="worker must be"):
        setup(web_app, example.queue, worker="yes")  # type: ignore[arg-type]
    setup(web_app, example.queue)
    with pytest.raises(ConfigurationError, match="already set up"):
        setup(web_app, example.queue)
