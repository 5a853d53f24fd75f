"""Raw result-backend operations on sqlite://, redis:// and mysql:// in one run, with ratios.

Run with ``python benchmarks/result_backends.py [--count 2000] [--concurrency 50]
[--redis redis://127.0.0.1:6379/0] [--mysql mysql://root@127.0.0.1:3306/test]``.

For each backend (skipped if its server does not answer): ``set`` of final records from
``--concurrency`` tasks (records/s), ``get_many`` of them 100 ids at a time (records/s),
concurrent ``incr`` on one counter (increments/s), and the cross-instance wake-up: a reader
instance waits, a writer instance stores the final record, sequentially ``--waits`` times
(p50 / p99 ms; mysql:// polls, at its ``poll_interval``). The ratios are against sqlite://
measured in the same invocation. MySQL tables use a fresh prefix, dropped afterwards; Redis
keys a fresh prefix, expiring after 10 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asyncq.backends import ResultBackend, backend_from_url
from tests.conformance.drivers_mysql import drop_tables


async def _gather_limited(count: int, concurrency: int, op: Callable[[int], Awaitable[Any]]) -> float:
    """Run ``op(i)`` for i < count with ``concurrency`` at once; return ops/s."""
    queue = iter(range(count))

    async def lane() -> None:
        for i in queue:
            await op(i)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def measure(
    make: Callable[[], Awaitable[ResultBackend]], count: int, concurrency: int, waits: int
) -> dict[str, float]:
    writer, reader = await make(), await make()
    try:
        run = uuid.uuid4().hex[:8]
        ids = [f"{run}-{i}" for i in range(count)]
        record = b'{"status":"SUCCESS","result":4}'
        sets = await _gather_limited(
            count, concurrency, lambda i: writer.set(ids[i], record, final=True, ttl=600)
        )
        started = time.perf_counter()
        for start in range(0, count, 100):
            await reader.get_many(ids[start : start + 100])
        gets = count / (time.perf_counter() - started)
        key = f"{run}-counter"
        incrs = await _gather_limited(count, concurrency, lambda i: writer.incr(key, ttl=600))
        latencies = []
        for i in range(waits):
            task_id = f"{run}-wait-{i}"
            waiter = asyncio.create_task(reader.wait(task_id, timeout=10))
            await asyncio.sleep(0)  # let the wait register before timing the write
            started = time.perf_counter()
            await writer.set(task_id, record, final=True, ttl=600)
            assert await waiter == record
            latencies.append((time.perf_counter() - started) * 1000)
        latencies.sort()
        return {
            "set/s": sets,
            "get_many rec/s": gets,
            "incr/s": incrs,
            "wake p50 ms": statistics.median(latencies),
            "wake p99 ms": latencies[int(len(latencies) * 0.99) - 1],
        }
    finally:
        await writer.aclose()
        await reader.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--waits", type=int, default=200)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--mysql", default="mysql://root@127.0.0.1:3306/test")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="asyncq-bench-"))
    prefix = f"asyncq_bench_{uuid.uuid4().hex[:8]}_"
    urls = {
        "sqlite": f"sqlite:///{tmp / 'results.db'}",
        "redis": args.redis,
        "mysql": f"{args.mysql}{'&' if '?' in args.mysql else '?'}table_prefix={prefix}",
    }
    options: dict[str, dict[str, Any]] = {"redis": {"key_prefix": f"asyncq-bench-{uuid.uuid4().hex[:8]}"}}
    results: dict[str, dict[str, float]] = {}
    for name, url in urls.items():

        async def make(url: str = url, name: str = name) -> ResultBackend:
            backend = backend_from_url(url, **options.get(name, {}))
            await backend.connect()
            return backend

        try:
            results[name] = await measure(make, args.count, args.concurrency, args.waits)
        except Exception as exc:  # a server that is not there: skip it, say why
            print(f"{name}: skipped ({exc})")
    if "mysql" in results:
        await drop_tables(args.mysql, prefix)
    base = results.get("sqlite")
    metrics = list(next(iter(results.values())))
    print(f"{'backend':8} " + " ".join(f"{m:>22}" for m in metrics))
    for name, row in results.items():
        cells = []
        for metric in metrics:
            ratio = f" ({row[metric] / base[metric]:.2f}x)" if base else ""
            cells.append(f"{row[metric]:>12.1f}{ratio:>10}")
        print(f"{name:8} " + " ".join(cells))
    print("ratios are against sqlite:// in this run (for ms columns, lower is better)")


if __name__ == "__main__":
    asyncio.run(main())
