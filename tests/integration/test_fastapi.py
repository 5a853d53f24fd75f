"""The FastAPI example served by uvicorn on a free port, called over HTTP, on the real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from asyncq import App
from asyncq.contrib.fastapi import AsyncqApp, get_app, lifespan
from asyncq.exceptions import ConfigurationError
from tests.helpers import delete_prefix, unique_prefix, until
from tests.services import require_service

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def broker_env() -> AsyncIterator[dict[str, str]]:
    """An environment whose app uses the shared Redis under a key prefix of its own."""
    base = require_service("redis")
    prefix = unique_prefix()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCQ_", "EXAMPLE_"))}
    env["ASYNCQ_BROKER_URL"] = f"{base}?key_prefix={prefix}"
    env["PYTHONPATH"] = str(ROOT)
    yield env
    await delete_prefix(base, prefix)


@pytest.fixture
async def redis_queue() -> AsyncIterator[App]:
    """An App of this process on the shared Redis under a key prefix of its own."""
    base = require_service("redis")
    prefix = unique_prefix()
    queue = App("lifespan-test", broker=f"{base}?key_prefix={prefix}")
    yield queue
    await queue.aclose()
    await delete_prefix(base, prefix)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start processes whose output goes to a log; each one still running at the end is killed."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log_path = tmp_path / f"proc-{len(started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, stdout=log, stderr=log)
        proc.log_path = log_path  # type: ignore[attr-defined]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


async def serve(
    spawn: Callable[..., subprocess.Popen[bytes]], env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    """Run the example under uvicorn; return the process and its base URL once it answers."""
    port = free_port()
    proc = spawn("-m", "uvicorn", "examples.fastapi_app:api", "--port", str(port), env=env)
    base = f"http://127.0.0.1:{port}"

    async def answers() -> bool:
        assert proc.poll() is None, f"uvicorn exited with {proc.returncode}"
        try:
            async with httpx.AsyncClient(base_url=base, timeout=5) as client:
                return (await client.get("/health")).status_code == 200
        except httpx.TransportError:
            return False

    await until(answers, timeout=60)
    return proc, base


async def check_routes(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        response = await client.post("/add", params={"x": 2, "y": 40})
        assert response.status_code == 200, response.text
        assert response.json()["sum"] == 42

        # A plain `def` route (FastAPI's thread pool) sends and waits with the sync API.
        response = await client.post("/add-sync", params={"x": 3, "y": 4})
        assert response.status_code == 200, response.text
        assert response.json()["sum"] == 7

        response = await client.post("/jobs/slow-add", params={"x": 1, "y": 2, "seconds": 0.1})
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]

        async def finished() -> bool:
            body = (await client.get(f"/jobs/{task_id}")).json()
            assert body["state"] in ("PENDING", "RECEIVED", "STARTED", "SUCCESS"), body
            return body["state"] == "SUCCESS" and body["result"] == 3

        await until(finished, timeout=60)


def stop(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM the process, check it stopped cleanly, return its log."""
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    log = Path(proc.log_path).read_text()  # type: ignore[attr-defined]
    # uvicorn re-raises the signal once it has shut down, so -SIGTERM is its clean exit.
    assert code in (0, -signal.SIGTERM), f"exit status {code}:\n{log}"
    assert "Traceback" not in log, log
    return log


async def test_routes_with_the_worker_in_the_lifespan(
    broker_env: dict[str, str], spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    server, base = await serve(spawn, broker_env)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        assert (await client.get("/health")).json() == {"app": "fastapi-example", "embedded_worker": True}
    await check_routes(base)
    # SIGTERM: uvicorn runs the lifespan's shutdown, which stops the worker and closes asyncq.
    assert "Application shutdown complete" in stop(server)


async def test_routes_with_a_separate_worker_process(
    broker_env: dict[str, str], spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    env = {**broker_env, "EXAMPLE_EMBEDDED_WORKER": "0"}
    server, base = await serve(spawn, env)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        assert (await client.get("/health")).json()["embedded_worker"] is False
        # Nothing consumes yet: the job stays pending, so the route really sends to the broker.
        task_id = (await client.post("/jobs/slow-add", params={"x": 5, "y": 5})).json()["task_id"]
        assert (await client.get(f"/jobs/{task_id}")).json()["state"] == "PENDING"
    worker = spawn("-m", "asyncq", "run", "examples.fastapi_app:queue", "--log-level", "warning", env=env)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def done() -> bool:
            return (await client.get(f"/jobs/{task_id}")).json().get("result") == 10

        await until(done, timeout=60)
    await check_routes(base)
    assert "Application shutdown complete" in stop(server)
    stop(worker)


# -- the lifespan and the dependency, served in this process -----------------------------------


@asynccontextmanager
async def serve_in_process(api: FastAPI) -> AsyncIterator[tuple[uvicorn.Server, str]]:
    """Serve ``api`` with uvicorn in this loop on a socket bound to a free port; stop it on exit."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(api, log_level="warning", lifespan="on"))
        task = asyncio.create_task(server.serve(sockets=[sock]), name="test.uvicorn")
        try:
            await until(lambda: server.started or task.done(), timeout=60)
            yield server, f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            await task


async def test_wrapped_lifespan_runs_inside_asyncq_and_keeps_its_state(redis_queue: App) -> None:
    @redis_queue.task(name="wrapped.echo")
    async def echo(value: str) -> str:
        return value

    @asynccontextmanager
    async def own_lifespan(api: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # asyncq is open already: the application's start-up can enqueue.
        warm_up = await echo.enqueue("warm")
        yield {"warm_up_id": warm_up.id}

    api = FastAPI(lifespan=lifespan(redis_queue, worker={"concurrency": 4}, wraps=own_lifespan))

    @api.get("/warm-up")
    async def warm_up(request: Request, app: AsyncqApp) -> dict[str, Any]:
        return {"result": await app.AsyncResult(request.state.warm_up_id).get(timeout=30)}

    async with serve_in_process(api) as (_, base), httpx.AsyncClient(base_url=base, timeout=60) as client:
        assert (await client.get("/warm-up")).json() == {"result": "warm"}
    assert not redis_queue._current_drivers().connected  # the shutdown closed asyncq


async def test_a_route_without_the_lifespan_gets_a_clear_error(redis_queue: App) -> None:
    api = FastAPI()

    @api.get("/name")
    async def name(app: AsyncqApp) -> dict[str, str]:
        return {"app": app.main}

    @api.exception_handler(ConfigurationError)
    async def configuration_error(request: Request, exc: ConfigurationError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=500)

    async with serve_in_process(api) as (_, base), httpx.AsyncClient(base_url=base, timeout=60) as client:
        response = await client.get("/name")
        assert response.status_code == 500
        assert "FastAPI(lifespan=asyncq.contrib.fastapi.lifespan(app))" in response.json()["error"]
        api.dependency_overrides[get_app] = lambda: redis_queue  # how tests swap the App
        assert (await client.get("/name")).json() == {"app": redis_queue.main}


def test_an_unreachable_broker_fails_the_start_up(
    broker_env: dict[str, str], spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    env = {**broker_env, "ASYNCQ_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens
    server = spawn("-m", "uvicorn", "examples.fastapi_app:api", "--port", str(free_port()), env=env)
    assert server.wait(timeout=60) == 3  # uvicorn's start-up failure status
    log = Path(server.log_path).read_text()  # type: ignore[attr-defined]
    assert "Application startup failed" in log
    assert "BrokerConnectionError" in log


async def test_sync_routes_reach_a_memory_app_whose_worker_runs_in_the_server() -> None:
    queue = App("memory-sync-routes", broker="memory://")

    @queue.task(name="memory.double")
    async def double(x: int) -> int:
        return 2 * x

    api = FastAPI(lifespan=lifespan(queue, worker=True))

    @api.post("/double")
    def double_route(x: int) -> dict[str, int]:  # runs in a thread: delay() and get() block it
        return {"result": double.delay(x).get(timeout=30)}

    async with serve_in_process(api) as (_, base), httpx.AsyncClient(base_url=base, timeout=60) as client:
        assert (await client.post("/double", params={"x": 21})).json() == {"result": 42}


def test_lifespan_refuses_a_bad_worker_option() -> None:
    with pytest.raises(ConfigurationError, match="worker must be a bool or a mapping"):
        lifespan(App("x", broker="memory://"), worker="yes")  # type: ignore[arg-type]
