"""What flow control costs a worker: a drain of no-op tasks with and without limits.

One embedded worker drains ``--tasks`` queued no-op tasks, per mode, rounds interleaved:

  * ``plain``: no limit (the baseline);
  * ``rate``: a global ``rate_limit`` far above the drain rate (every start books in the
    store, none waits): the cost of the booking round trips, batched per loop iteration;
  * ``key``: ``concurrency_key`` over 100 keys with a ``max_concurrency`` never reached: a
    slot taken and given back per task.

Prints tasks/s per mode (median of the rounds) and its ratio to ``plain``.

Usage: python benchmarks/flow_limits.py [--url sqlite:///...|redis://...] [--tasks 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from _common import Countdown, delete_prefix, send_all

from asyncq import App

MODES = ("plain", "rate", "key")


async def drain(url: str, mode: str, n: int) -> float:
    prefix = f"bench-flow-{uuid.uuid4().hex[:8]}"
    options = {"key_prefix": prefix} if url.startswith("redis") else {}
    app = App(
        "bench-flow",
        broker=url,
        config={
            "broker_transport_options": options,
            "result_backend_transport_options": options,
            "task_default_queue": prefix,
            "task_ignore_result": True,
        },
    )
    runs = Countdown(n)
    limits: dict[str, object] = {
        "plain": {},
        "rate": {"rate_limit": 1_000_000.0},
        "key": {"concurrency_key": "key", "max_concurrency": 1_000_000},
    }[mode]

    @app.task(name=f"bench.noop.{mode}", **limits)  # type: ignore[call-overload]
    async def noop(key: int) -> None:
        runs.tick()

    await send_all(app, [noop.build_message((i % 100,)) for i in range(n)])
    started = time.perf_counter()
    async with app.worker(concurrency=200, prefetch=200):
        await asyncio.wait_for(runs.done.wait(), 600)
        elapsed = time.perf_counter() - started
    await app.aclose()
    if options:
        await delete_prefix(url, prefix)
    return n / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=None, help="broker URL (default: a fresh SQLite file)")
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as directory:
        rates: dict[str, list[float]] = {mode: [] for mode in MODES}
        for round_number in range(args.rounds):
            for mode in MODES:
                url = args.url or f"sqlite:///{Path(directory) / f'{mode}-{round_number}.db'}"
                rates[mode].append(await drain(url, mode, args.tasks))
    base = statistics.median(rates["plain"])
    where = f"{args.url or 'sqlite'}, {args.tasks} tasks, {args.rounds} rounds"
    print(f"{'mode':<6} {'tasks/s':>9} {'ratio':>6}   ({where})")
    for mode in MODES:
        median = statistics.median(rates[mode])
        print(f"{mode:<6} {median:>9.0f} {median / base:>6.2f}")


if __name__ == "__main__":
    asyncio.run(main())
