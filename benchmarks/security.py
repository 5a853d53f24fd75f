"""The price of message security: Redis drain rate with signing off, HMAC, Ed25519 and encryption.

Each mode enqueues the same N no-op tasks (two small arguments, results ignored) on a fresh
key prefix, then times one embedded worker draining them; the modes run interleaved in the
same process, ``--repeat`` times, and the best rate of each is compared with "off".

Usage::

    python benchmarks/security.py [--url redis://127.0.0.1:6379/0] [--tasks 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from redis.asyncio import Redis

from asyncq import App
from asyncq.security import generate_key

ED25519 = Ed25519PrivateKey.generate()
MODES: dict[str, dict[str, Any]] = {
    "off": {},
    "hmac": {"security_key": "b" * 32},
    "ed25519": {"security_private_key": ED25519},
    "encryption": {"security_encryption_key": generate_key(), "security_encrypt": True},
    "hmac+encryption": {
        "security_key": "b" * 32,
        "security_encryption_key": generate_key(),
        "security_encrypt": True,
    },
}


async def drain_rate(url: str, mode: str, tasks: int) -> float:
    prefix = f"asyncq-bench-sec-{uuid.uuid4().hex[:8]}"
    config = {
        **MODES[mode],
        "task_ignore_result": True,
        "broker_transport_options": {"key_prefix": prefix},
        "result_backend_transport_options": {"key_prefix": prefix},
    }
    app = App("bench-security", broker=url, config=config)
    finished = asyncio.Event()
    count = 0

    @app.task
    async def noop(x: int, y: str) -> None:
        nonlocal count
        count += 1
        if count == tasks:
            finished.set()

    try:
        await app.connect()
        for start in range(0, tasks, 1000):
            await asyncio.gather(
                *(noop.enqueue(i, "payload") for i in range(start, min(tasks, start + 1000)))
            )
        started = time.perf_counter()
        async with app.worker(concurrency=200):
            await asyncio.wait_for(finished.wait(), timeout=600)
            elapsed = time.perf_counter() - started
    finally:
        await app.aclose()
        client = Redis.from_url(url)
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.delete(key)
        await client.aclose()
    return tasks / elapsed


async def main(args: argparse.Namespace) -> None:
    best: dict[str, float] = {}
    print(f"redis drain, {args.tasks} tasks per run, {args.repeat} runs per mode (best kept)")
    for run in range(args.repeat):
        for mode in MODES:
            rate = await drain_rate(args.url, mode, args.tasks)
            best[mode] = max(best.get(mode, 0.0), rate)
            print(f"  run {run + 1} {mode:<16} {rate:>10,.0f} tasks/s")
    print(f"\n{'mode':<16} {'tasks/s':>10} {'vs off':>8}")
    for mode, rate in best.items():
        print(f"{mode:<16} {rate:>10,.0f} {rate / best['off']:>8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
