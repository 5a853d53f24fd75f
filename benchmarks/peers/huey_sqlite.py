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


def enqueue_beside_drain(count: int, backlog: int) -> dict[str, float]:
    """``count`` sequential enqueues while the consumer drains a backlog it does not run out of."""
    from sqlite_roundtrip import beside_drain, rows_left, wait_draining

    path = os.environ.get("BENCH_HUEY_DB", "huey.db")
    for _ in range(backlog):
        noop()
    wait_draining(path, "task", backlog)
    before = rows_left(path, "task")
    started = time.perf_counter()
    for _ in range(count):
        noop()
    seconds = time.perf_counter() - started
    return beside_drain(path, "task", before, rows_left(path, "task"), count, seconds)


def client(round_trips: int, enqueues: int, backlog: int) -> dict[str, float]:
    """Sequential round trips against a running consumer, then sequential enqueues beside a
    draining consumer (``round_trips`` 0: enqueues only, no consumer)."""
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
    return {"p50": statistics.median(samples), "p99": p99, **enqueue_beside_drain(enqueues, backlog)}
