"""The asyncq demo: start a worker process, enqueue tasks from this one, print the results.

Run it with ``python examples/demo.py`` from the repository root. It uses the embedded
default store (a SQLite file in the user's state directory), so no server is needed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.tasks import add, app, digest, flaky, nap, word_count  # noqa: E402


async def main() -> None:
    print(f"store: {app.broker_url}")
    stale = await app.purge()
    if stale:
        print(f"(dropped {stale} message(s) left over from an earlier run)")
    command = [sys.executable, "-m", "asyncq", "run", "examples.tasks:app", "--concurrency", "1000"]
    # Popen returns at once: starting the worker process does not block the loop.
    worker = subprocess.Popen([*command, "--log-level", "warning"], cwd=ROOT)
    try:
        r = await add.enqueue(4, 4)
        print(f"add(4, 4)                 = {await r.get(timeout=30)}   (task id {r.id})")
        words = await word_count.enqueue("the quick brown fox")
        print(f"word_count(...)           = {await words.get(timeout=30)}")
        hashed = await digest.enqueue("asyncq", 100_000)
        print(f"digest('asyncq', 100000)  = {await hashed.get(timeout=60)}")
        print(f"flaky('demo')             = {await (await flaky.enqueue('demo')).get(timeout=30)}")
        started = time.perf_counter()
        naps = await app.send_many([nap.build_message((0.5,)) for _ in range(2000)])
        await asyncio.gather(*(n.get(timeout=60) for n in naps))
        print(f"2,000 x nap(0.5) finished in {time.perf_counter() - started:.2f} s in one worker process")
    finally:
        await app.aclose()
        worker.terminate()  # SIGTERM: the worker stops gracefully
        worker.wait(timeout=30)
    print("demo finished" if worker.returncode == 0 else f"worker exited with {worker.returncode}")


if __name__ == "__main__":
    asyncio.run(main())
