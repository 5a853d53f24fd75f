"""Drain and round trip of the sqs:// and kafka:// brokers, next to redis:// in the same run.

Run: ``python benchmarks/sqs_kafka.py [--tasks 2000] [--round-trips 200] [--only redis,sqs,kafka]``.

The servers: the local Redis (a key prefix of this run's own), a moto server and a Tansu broker
(memory storage) started by this script on free loopback ports. Every broker gets the same
result backend (the local Redis, own prefix) and the same worker (``asyncq run``, one process,
concurrency 100), so only the broker differs:

1. drain: ``--tasks`` (SQS: ``--sqs-tasks``) no-op tasks queued with no worker running, then
   a worker started -> tasks/s from the moment the queue first shrinks (worker start-up not
   counted) until it is empty (``queue_length`` polled every 50 ms);
2. round trip: ``--round-trips`` sequential ``enqueue`` -> ``get`` of a task returning 1
   against the warm worker -> p50 / p99 ms.

The table gives each broker's numbers and their ratio to Redis (rates broker/redis, times
redis/broker: below 1 is slower than Redis). moto and Tansu are test servers on one machine,
not AWS or a Kafka cluster: the figures compare client paths and protocols, not services.
Kafka's queue length is consumer lag, which moves when offsets are committed (every 0.2 s):
its drain figure is an upper bound. Results of one run: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from asyncq import App  # noqa: E402  (after the path set-up above)


async def _noop() -> None:
    return None


async def _echo() -> int:
    return 1


def build(broker: str, backend: str) -> tuple[App, Any, Any]:
    """An app with the two tasks, under fixed names (the client and the worker share them)."""
    bench = App("bench-sqs-kafka", broker=broker, backend=backend)
    return (
        bench,
        bench.task(name="bench.noop", ignore_result=True)(_noop),
        bench.task(name="bench.echo")(_echo),
    )


# The worker's app (``asyncq run sqs_kafka:app``), from the environment this script sets.
app, _, _ = build(
    os.environ.get("BENCH_BROKER_URL", "memory://"), os.environ.get("BENCH_BACKEND_URL", "memory://")
)

Starter = Callable[[], "subprocess.Popen[bytes]"]


async def drain(bench: App, noop: Any, count: int, queue: str, start_worker: Starter) -> float:
    await bench.send_many([noop.build_message((), queue=queue) for _ in range(count)])
    broker = bench.broker
    assert await broker.queue_length(queue) == count
    worker = start_worker()
    try:
        while await broker.queue_length(queue) == count:
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        while await broker.queue_length(queue) > 0:
            await asyncio.sleep(0.05)
        return count / (time.perf_counter() - started)
    finally:
        worker.terminate()
        worker.wait(60)


async def round_trips(echo: Any, count: int, queue: str) -> tuple[float, float]:
    for _ in range(20):  # warm: the worker answers
        await (await echo.apply_async(queue=queue)).get(timeout=60)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await (await echo.apply_async(queue=queue)).get(timeout=30)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def worker_starter(env: dict[str, str]) -> Starter:
    def start() -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "asyncq", "run", "sqs_kafka:app", "--concurrency", "100"]
        return subprocess.Popen([*command, "--log-level", "error"], env=env, cwd=HERE)

    return start


async def measure(name: str, broker_url: str, backend_url: str, args: argparse.Namespace) -> dict[str, float]:
    tasks = args.sqs_tasks if name == "sqs" else args.tasks
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "BENCH_BROKER_URL": broker_url,
        "BENCH_BACKEND_URL": backend_url,
        "ASYNCQ_TASK_DEFAULT_QUEUE": queue,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
    }
    bench, noop, echo = build(broker_url, backend_url)
    await bench.connect()
    try:
        rate = await drain(bench, noop, tasks, queue, worker_starter(env))
        worker = worker_starter(env)()
        try:
            p50, p99 = await round_trips(echo, args.round_trips, queue)
        finally:
            worker.terminate()
            worker.wait(60)
    finally:
        await bench.aclose()
    print(f"{name:6} drain {rate:8.0f} tasks/s   round trip p50 {p50:7.2f} ms  p99 {p99:7.2f} ms", flush=True)
    return {"drain": rate, "p50": p50, "p99": p99}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    # moto's server spends time per request that grows with the queue's depth: a deep SQS
    # queue would measure moto, not the driver.
    parser.add_argument("--sqs-tasks", type=int, default=300)
    parser.add_argument("--round-trips", type=int, default=200)
    parser.add_argument("--only", default="redis,sqs,kafka")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    from tests.servers import moto_sqs, tansu_kafka  # the test helpers start the servers

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    backend = f"{args.redis}?key_prefix={prefix}-results"
    urls = {
        "redis": f"{args.redis}?key_prefix={prefix}",
        "sqs": lambda: moto_sqs().url + f"&queue_prefix={prefix}-",
        "kafka": lambda: f"{tansu_kafka().url}?group_id={prefix}&topic_prefix={prefix}.&partitions=4",
    }
    results = {}
    for name in args.only.split(","):
        url = urls[name]
        results[name] = asyncio.run(measure(name, url if isinstance(url, str) else url(), backend, args))
    base = results.get("redis")
    if base:
        for name, got in results.items():
            if name != "redis":
                print(
                    f"{name} / redis: drain x{got['drain'] / base['drain']:.2f},"
                    f" round trip p50 x{base['p50'] / got['p50']:.2f}, p99 x{base['p99'] / got['p99']:.2f}"
                )


if __name__ == "__main__":
    main()
