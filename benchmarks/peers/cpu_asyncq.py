"""asyncq for ``benchmarks/compare_cpu.py``: CPU tasks on its process pool, io tasks on the loop.

Worker: ``asyncq run peers.cpu_asyncq:app --concurrency 1000`` (one process; its process pool,
``worker_process_pool_size``, is sized to the cores and spawns its children itself).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from asyncq import App
from peers._common import redis_url
from peers._span import burn, loops, record, record_async

DB = 2
CORES = int(os.environ.get("BENCH_CORES") or os.cpu_count() or 1)
app = App(
    "benchcpu",
    broker=redis_url(DB),
    config={"worker_process_pool_size": CORES, "task_ignore_result": True},
)


@app.task(name="crunch", executor="process")
def crunch() -> None:
    start = time.time()
    burn(loops())
    record(start)


@app.task(name="wait")
async def wait() -> None:
    start = time.time()
    await asyncio.sleep(0.5)
    await record_async(start)


#: workload -> variant -> its worker commands (one here: io and CPU share the one worker).
def variants(workload: str, concurrency: int) -> dict[str, list[list[str]]]:
    command = [
        *(sys.executable, "-m", "asyncq", "run", "peers.cpu_asyncq:app"),
        *("--concurrency", str(concurrency), "--loop", "uvloop", "--log-level", "warning"),
    ]
    return {f"process pool {CORES} + loop" if workload == "mixed" else f"process pool {CORES}": [command]}


async def fill(kinds: list[str]) -> None:
    await app.connect()
    try:
        messages = [(crunch if kind == "cpu" else wait).build_message() for kind in kinds]
        for start in range(0, len(messages), 1000):
            await app.send_many(messages[start : start + 1000])
    finally:
        await app.aclose()
