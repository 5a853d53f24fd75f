"""Canvas wall times: a 10,000-task group and a 1,000-task chord, end to end.

Runs on Redis when one answers (``ASYNCQ_BENCH_REDIS_URL``, default redis://127.0.0.1:6379/0)
and its driver is installed, else on a temporary SQLite store; ``--url`` picks any URL (used
as broker and backend). One worker is embedded in this process (so producer and worker share
one event loop and one CPU), started before the workflow is sent.

Prints, per workflow:
  * publish: building every message and publishing it (the group goes out in batches of 500);
  * total: from ``enqueue()`` until ``await result.get()`` returns the final value;
  * tasks/s: tasks run (header + callback for the chord) per second of total.

Usage: python benchmarks/canvas.py [--url URL] [--group 10000] [--chord 1000] [--concurrency 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import socket
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from asyncq import App, chord, group


def redis_url() -> str | None:
    """The benchmark's Redis URL, if a server answers there and the driver is installed."""
    url = os.environ.get("ASYNCQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1):
            pass
        importlib.import_module("asyncq.brokers.redis")
        importlib.import_module("asyncq.backends.redis")
    except (OSError, ImportError):
        return None
    return url


def make_app(url: str) -> tuple[App, Any, Any]:
    app = App(
        "bench-canvas",
        broker=url,
        backend=url,
        config={"task_default_queue": f"bench-canvas-{uuid.uuid4().hex[:8]}", "result_expires": 600},
    )

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def tsum(values: list[int]) -> int:
        return sum(values)

    return app, add, tsum


async def bench_group(url: str, size: int, concurrency: int) -> tuple[float, float]:
    app, add, _ = make_app(url)
    try:
        async with app.worker(concurrency=concurrency):
            started = time.perf_counter()
            result = await group(add.s(i, i) for i in range(size)).enqueue()
            published = time.perf_counter() - started
            values = await result.get(timeout=600)
            total = time.perf_counter() - started
        assert values == [i * 2 for i in range(size)]
        return published, total
    finally:
        await app.aclose()


async def bench_chord(url: str, size: int, concurrency: int) -> tuple[float, float]:
    app, add, tsum = make_app(url)
    try:
        async with app.worker(concurrency=concurrency):
            started = time.perf_counter()
            result = await chord((add.s(i, i) for i in range(size)), tsum.s()).enqueue()
            published = time.perf_counter() - started
            value = await result.get(timeout=600)
            total = time.perf_counter() - started
        assert value == sum(i * 2 for i in range(size))
        return published, total
    finally:
        await app.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="broker and backend URL (default: Redis if reachable, else SQLite)")
    parser.add_argument("--group", type=int, default=10_000, help="tasks in the group")
    parser.add_argument("--chord", type=int, default=1_000, help="tasks in the chord's header")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3, help="runs of each; the median is printed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or redis_url() or f"sqlite:///{Path(tmp) / 'bench.db'}"
        if url.startswith("redis") and "max_connections" not in url:
            # redis-py 8 pools hold 100 connections and raise beyond: leave room for the
            # worker's concurrent result writes, chord joins and the producer's waits.
            url += ("&" if "?" in url else "?") + f"max_connections={args.concurrency * 4}"
        scheme = urlsplit(url).scheme
        print(f"driver: {scheme}://  concurrency {args.concurrency}  median of {args.runs} runs")
        print(f"{'workflow':22} {'publish s':>10} {'total s':>9} {'tasks/s':>9}")
        for name, bench, size, tasks in (
            (f"group of {args.group:,}", bench_group, args.group, args.group),
            (f"chord of {args.chord:,}", bench_chord, args.chord, args.chord + 1),
        ):
            runs = [await bench(url, size, args.concurrency) for _ in range(args.runs)]
            published = statistics.median(run[0] for run in runs)
            total = statistics.median(run[1] for run in runs)
            print(f"{name:22} {published:10.3f} {total:9.3f} {tasks / total:9,.0f}")


if __name__ == "__main__":
    import sys

    from asyncq.runner import loop_factory

    factory = loop_factory("auto")
    print(f"event loop: {'uvloop' if factory else 'asyncio'}")
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
    sys.exit(0)
