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
    worker = subprocess.Popen(
        [sys.executable, "-m", "asyncq", "run", "examples.tasks:app", "--concurrency", "1000", "--log-level", "warning"],
        cwd=ROOT,
    )
    try:
        r = await add.enqueue(4, 4)
        print(f"add(4, 4)                 = {await r.get(timeout=30)}   (task id {r.id})")
        print(f"word_count(...)           = {await (await word_count.enqueue('the quick brown fox')).get(timeout=30)}")
        print(f"digest('asyncq', 100000)  = {await (await digest.enqueue('asyncq', 100_000)).get(timeout=60)}")
        print(f"flaky('demo')             = {await (await flaky.enqueue('demo')).get(timeout=30)}")
        started = time.perf_counter()
        naps = await app.send_many([nap.build_message((0.5,)) for _ in range(2000)])
        await asyncio.gather(*(n.get(timeout=60) for n in naps))
        print(f"2,000 x nap(0.5) finished in {time.perf_counter() - started:.2f} s in one worker process")
    finally:
        await app.aclose()
        worker.terminate()  # SIGTERM: the worker stops gracefully
        worker.wait(timeout=30)
    print("demo finished: the worker stopped cleanly" if worker.returncode == 0 else "worker exit code %s" % worker.returncode)


if __name__ == "__main__":
    asyncio.run(main())
