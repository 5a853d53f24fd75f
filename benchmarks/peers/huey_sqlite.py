"""huey's SqliteHuey on the file named by BENCH_HUEY_DB, for benchmarks/sqlite_roundtrip.py.

Consumer: ``huey_consumer peers.huey_sqlite.huey -w 4 -k thread`` (default polling).
Client: ``client(round_trips, enqueues)``, imported (huey names tasks by module).
"""

from __future__ import annotations

import os
import statistics
import time

from huey import SqliteHuey

huey = SqliteHuey("bench", filename=os.environ.get("BENCH_HUEY_DB", "huey.db"))


@huey.task()
def echo() -> int:
    return 1


@huey.task()
def noop() -> None:
    return None


def enqueue_rate(count: int) -> float:
    """Sequential enqueues after 50 untimed ones: calls/s."""
    for _ in range(50):
        noop()
    started = time.perf_counter()
    for _ in range(count):
        noop()
    return count / (time.perf_counter() - started)


def client(round_trips: int, enqueues: int) -> dict[str, float]:
    """Sequential round trips against a running consumer, then sequential enqueues (0: enqueues only)."""
    if not round_trips:
        return {"enqueue_idle": enqueue_rate(enqueues)}
    echo()(blocking=True, timeout=60)  # warm up
    samples = []
    for _ in range(round_trips):
        started = time.perf_counter()
        echo()(blocking=True, timeout=10)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return {"p50": statistics.median(samples), "p99": p99, "enqueue_busy": enqueue_rate(enqueues)}
