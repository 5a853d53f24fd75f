"""What isolating suspect messages costs, on memory://.

Prints:
  * first deliveries: N no-op tasks run in the worker -> wall time, tasks/s;
  * suspects: the same N after a simulated worker loss (each delivered a second time), run
    in the sandbox processes -> wall time, tasks/s, ms per suspect;
  * poison: P suspects that kill their sandbox child, dead-lettered after max_deliveries
    isolated crashes -> wall time, ms per poison message (each costs max_deliveries child starts).

Usage: python benchmarks/suspects.py [--tasks 500] [--poison 5] [--max-deliveries 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from contextlib import aclosing

from suspect_tasks import app, noop


async def lose_all(queue: str, n: int) -> None:
    """Take n messages and hand them back unfinished, as a worker that died would."""
    async with aclosing(app.broker.consume([queue], prefetch=n)) as deliveries:
        held = [await anext(deliveries) for _ in range(n)]
        for delivery in held:
            await delivery.nack()


async def drain(queue: str, n: int, *, poison: bool, lost: bool, max_deliveries: int) -> float:
    messages = [noop.build_message((), {"poison": poison}, queue=queue) for _ in range(n)]
    results = await app.send_many(messages)
    if lost:
        await lose_all(queue, n)
    started = time.perf_counter()
    async with app.worker(queues=[queue], concurrency=100, max_deliveries=max_deliveries):
        for r in results:
            await r.get(timeout=600, propagate=False)
    return time.perf_counter() - started


async def main(tasks: int, poison: int, max_deliveries: int) -> None:
    await app.connect()
    # Warm the sandbox's imports once so the first suspect run does not pay for them alone.
    first = await drain("first", tasks, poison=False, lost=False, max_deliveries=max_deliveries)
    print(f"first deliveries: {tasks} tasks in {first:.2f}s = {tasks / first:,.0f} tasks/s")
    sus = await drain("suspects", tasks, poison=False, lost=True, max_deliveries=max_deliveries)
    print(
        f"suspects (sandbox): {tasks} tasks in {sus:.2f}s = {tasks / sus:,.0f} tasks/s, "
        f"{1000 * sus / tasks:.1f} ms each"
    )
    if poison:
        bad = await drain("poison", poison, poison=True, lost=True, max_deliveries=max_deliveries)
        dead = await app.broker.dead_letters("poison")
        print(
            f"poison: {poison} messages dead-lettered ({len(dead)} in the store) in {bad:.2f}s, "
            f"{1000 * bad / poison:.0f} ms each ({max_deliveries} isolated crashes each)"
        )
    await app.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--poison", type=int, default=5)
    parser.add_argument("--max-deliveries", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(args.tasks, args.poison, args.max_deliveries))
