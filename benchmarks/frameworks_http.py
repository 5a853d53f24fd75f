"""HTTP round trips through the framework examples: a request that enqueues a task and awaits its result.

Serves examples/fastapi_app.py (uvicorn) and examples/aiohttp_app.py (aiohttp's runner) in this
process with the worker embedded, on Redis under a key prefix of its own, and sends
``POST /add`` from ``--clients`` concurrent httpx clients. Prints requests/s and the median and
p95 latency of each; a baseline row measures ``GET /health`` (no task) on the same server.

    python benchmarks/frameworks_http.py [--url redis://127.0.0.1:6379/0] [--requests 2000] [--clients 50]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@asynccontextmanager
async def fastapi_server(queue_url: str) -> AsyncIterator[str]:
    import uvicorn

    from examples import fastapi_app

    fastapi_app.queue.conf.update(broker_url=queue_url, result_backend=queue_url)
    api = fastapi_app.create_api(embedded_worker=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(api, log_level="warning", lifespan="on"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            await task


@asynccontextmanager
async def aiohttp_server(queue_url: str) -> AsyncIterator[str]:
    from aiohttp import web

    from examples import aiohttp_app

    aiohttp_app.queue.conf.update(broker_url=queue_url, result_backend=queue_url)
    runner = web.AppRunner(aiohttp_app.create_app(embedded_worker=True))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def load(base: str, method: str, path: str, requests: int, clients: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    remaining = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def one_client() -> None:
            for _ in remaining:
                started = time.perf_counter()
                response = await client.request(method, path)
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        for _ in range(min(50, requests)):  # warm-up: connections, subscriptions
            await client.request(method, path)
        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        return time.perf_counter() - started, latencies


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    args = parser.parse_args()
    servers: dict[str, Callable[[str], AbstractAsyncContextManager[str]]] = {
        "fastapi+uvicorn": fastapi_server,
        "aiohttp": aiohttp_server,
    }
    print(f"{args.requests} requests from {args.clients} clients; worker embedded; broker {args.url}")
    print(f"{'server':<16} {'request':<16} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for name, serve in servers.items():
        prefix = f"asyncq-bench-{uuid.uuid4().hex[:8]}"
        url = f"{args.url}?key_prefix={prefix}"
        async with serve(url) as base:
            for method, path in (("GET", "/health"), ("POST", "/add?x=1&y=2")):
                elapsed, latencies = await load(base, method, path, args.requests, args.clients)
                latencies.sort()
                p95 = latencies[int(len(latencies) * 0.95) - 1]
                print(
                    f"{name:<16} {method + ' ' + path.split('?')[0]:<16} {len(latencies) / elapsed:>8.0f} "
                    f"{statistics.median(latencies) * 1000:>8.1f} {p95 * 1000:>8.1f}"
                )
        await delete_prefix(args.url, prefix)


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete this run's keys (results are kept for result_expires otherwise)."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
