"""Control-plane latency per broker: ping round trips, presence listing, revoke-to-skip.

Two embedded workers per driver (one process), then prints, per driver:
  * ping: median and worst of N ``app.control.ping(destination=[both])`` round trips (ms);
  * workers: median of N ``app.control.workers()`` calls (ms);
  * revoke: ms from ``result.revoke()`` of a queued task to its REVOKED record.

Usage: python benchmarks/control_plane.py [--drivers memory,sqlite,redis,rabbitmq] [--rounds 20]
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

from asyncq import App, State


def url_for(driver: str, directory: Path) -> tuple[str, str]:
    if driver == "memory":
        return "memory://", "memory://"
    backend = f"sqlite:///{directory / 'results.db'}"
    if driver == "sqlite":
        return f"sqlite:///{directory / 'broker.db'}", backend
    if driver == "redis":
        return f"redis://127.0.0.1:6379/0?key_prefix=bench-{uuid.uuid4().hex[:8]}", backend
    return "amqp://guest:guest@127.0.0.1:5672/", backend


async def measure(driver: str, rounds: int, directory: Path) -> str:
    broker, backend = url_for(driver, directory)
    queue = f"bench-ctl-{uuid.uuid4().hex[:8]}"
    app = App("bench", broker=broker, backend=backend, config={"task_default_queue": queue})

    @app.task
    async def noop() -> None:
        return None

    try:
        async with app.worker(hostname="b1"), app.worker(hostname="b2"):
            while len(await app.control.ping(destination=["b1", "b2"], timeout=2.0)) < 2:
                pass
            pings, lists = [], []
            for _ in range(rounds):
                started = time.perf_counter()
                await app.control.ping(destination=["b1", "b2"], timeout=5.0)
                pings.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                await app.control.workers()
                lists.append((time.perf_counter() - started) * 1000)
            result = await noop.apply_async(countdown=60)
            started = time.perf_counter()
            await result.revoke()
            # The task waits for its eta in the broker; the skip happens when it is delivered,
            # so what is measured here is the revoke call itself plus the stored revocation.
            revoke_ms = (time.perf_counter() - started) * 1000
            queued = await noop.enqueue()
            started = time.perf_counter()
            await app.control.revoke(queued.id)
            while await queued.state() not in (State.REVOKED, State.SUCCESS):
                await asyncio.sleep(0.001)
            race_state = await queued.state()
            to_final = (time.perf_counter() - started) * 1000
    finally:
        if driver == "rabbitmq":
            await app.connect()
            await app.broker.delete_queue(queue)  # type: ignore[attr-defined]
        await app.aclose()
    return (
        f"{driver:9s} ping median {statistics.median(pings):7.1f} ms, worst {max(pings):7.1f} ms | "
        f"workers() median {statistics.median(lists):6.1f} ms | revoke() {revoke_ms:6.1f} ms | "
        f"revoke of a queued task: {race_state.value} after {to_final:.1f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", default="memory,sqlite,redis,rabbitmq")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        for driver in args.drivers.split(","):
            print(await measure(driver.strip(), args.rounds, Path(tmp)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
