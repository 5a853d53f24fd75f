"""dramatiq for ``benchmarks/compare_cpu.py``: its Redis broker, worker processes x threads.

CPU tasks go to queue ``cpu``, io tasks to ``io``. CPU workload: ``--processes <cores>
--threads 1``. Mixed: two configurations, the better one counts: one worker tree on both
queues, ``--processes <cores> --threads <1000 / cores>`` (1,000 at once in all), and two trees,
``--processes <cores> --threads 1`` on ``cpu`` and ``--processes 1 --threads 1000`` on ``io``.
Retries are off, as no task fails.
"""

from __future__ import annotations

import os
import sys
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from peers._common import redis_url
from peers._span import burn, loops, record

DB = 4
CORES = int(os.environ.get("BENCH_CORES") or os.cpu_count() or 1)
broker = RedisBroker(url=redis_url(DB))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="crunch", queue_name="cpu", max_retries=0)
def crunch() -> None:
    start = time.time()
    burn(loops())
    record(start)


@dramatiq.actor(actor_name="wait", queue_name="io", max_retries=0)
def wait() -> None:
    start = time.time()
    time.sleep(0.5)
    record(start)


def _worker(processes: int, threads: int, *queues: str) -> list[str]:
    return [
        *(sys.executable, "-m", "dramatiq", "peers.cpu_dramatiq"),
        *("--processes", str(processes), "--threads", str(threads), "--queues", *queues),
    ]


def variants(workload: str, concurrency: int) -> dict[str, list[list[str]]]:
    if workload == "cpu":
        return {f"{CORES}x1": [_worker(CORES, 1, "cpu")]}
    threads = max(1, concurrency // CORES)
    return {
        f"{CORES}x{threads}": [_worker(CORES, threads, "cpu", "io")],
        f"{CORES}x1 + 1x{concurrency}": [_worker(CORES, 1, "cpu"), _worker(1, concurrency, "io")],
    }


async def fill(kinds: list[str]) -> None:
    for kind in kinds:
        (crunch if kind == "cpu" else wait).send()
