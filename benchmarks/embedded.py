"""Worker throughput on the embedded drivers (memory://, sqlite://).

Prints, per driver:
  * drain: 20,000 queued no-op tasks run by one worker -> tasks/s, and the ratio to the raw
    driver's consume+ack rate measured in the same run (the worker's share of the cost);
  * fan-out: 5,000 tasks each awaiting asyncio.sleep(0.5) at concurrency 1,000 -> wall time,
    and its ratio to the 2.5 s ideal (5 waves of 0.5 s).

Usage: python benchmarks/embedded.py [--drivers memory,sqlite] [--tasks 20000] [--sleepers 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from contextlib import aclosing
from pathlib import Path

from _common import Countdown, send_all

from asyncq import App
from asyncq.brokers import OutgoingMessage, broker_from_url


def url_for(driver: str, directory: Path, name: str) -> str:
    return "memory://" if driver == "memory" else f"sqlite:///{directory / name}.db"


async def raw_drain(url: str, n: int) -> float:
    """Consume and ack n messages straight from the driver: the baseline of the drain."""
    broker = broker_from_url(url)
    await broker.connect()
    batch = [OutgoingMessage(id=str(i), queue="raw", body=b"x" * 200) for i in range(n)]
    for start in range(0, n, 1000):
        await broker.publish_many(batch[start : start + 1000])
    started = time.perf_counter()
    pending: set[asyncio.Task[None]] = set()
    async with aclosing(broker.consume(["raw"], prefetch=1000)) as deliveries:
        count = 0
        async for delivery in deliveries:
            task = asyncio.create_task(delivery.ack())
            pending.add(task)
            task.add_done_callback(pending.discard)
            count += 1
            if count == n:
                break
    await asyncio.gather(*pending)
    elapsed = time.perf_counter() - started
    await broker.aclose()
    return n / elapsed


async def drain(url: str, n: int) -> float:
    app = App("bench-drain", broker=url)
    runs = Countdown(n)

    @app.task
    async def noop() -> None:
        runs.tick()

    await send_all(app, [noop.build_message() for _ in range(n)])
    started = time.perf_counter()
    async with app.worker(concurrency=500):
        await asyncio.wait_for(runs.done.wait(), 600)
        elapsed = time.perf_counter() - started
    await app.aclose()
    return n / elapsed


async def fan_out(url: str, n: int, concurrency: int) -> float:
    app = App("bench-fanout", broker=url)
    runs = Countdown(n)

    @app.task
    async def sleeper() -> None:
        await asyncio.sleep(0.5)
        runs.tick()

    await send_all(app, [sleeper.build_message() for _ in range(n)])
    started = time.perf_counter()
    async with app.worker(concurrency=concurrency):
        await asyncio.wait_for(runs.done.wait(), 600)
        elapsed = time.perf_counter() - started
    await app.aclose()
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--drivers", default="memory,sqlite")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--sleepers", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=1_000)
    parser.add_argument(
        "--loop", default="auto", help="auto (uvloop if installed, as `asyncq run`), asyncio, uvloop"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ideal = 0.5 * -(-args.sleepers // args.concurrency)
    header = ("driver", "drain tasks/s", "raw ack/s", "worker/raw", "fan-out s", "/ideal")
    print("{:8} {:>14} {:>10} {:>10} {:>10} {:>7}".format(*header))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for driver in args.drivers.split(","):
            raw = await raw_drain(url_for(driver, directory, "raw"), args.tasks)
            rate = await drain(url_for(driver, directory, "drain"), args.tasks)
            wall = await fan_out(url_for(driver, directory, "fanout"), args.sleepers, args.concurrency)
            print(
                f"{driver:8} {rate:14,.0f} {raw:10,.0f} {rate / raw:10.2f} {wall:10.2f} {wall / ideal:7.2f}"
            )
    print(
        f"(fan-out ideal: {ideal:.2f} s = {args.sleepers} sleeps of 0.5 s at concurrency {args.concurrency})"
    )


if __name__ == "__main__":
    import sys

    from asyncq.runner import loop_factory

    loop = sys.argv[sys.argv.index("--loop") + 1] if "--loop" in sys.argv else "auto"
    factory = loop_factory(loop)
    print(f"event loop: {'uvloop' if factory else 'asyncio'}")
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
