"""Sync ``delay()`` calls per second, asyncq against Celery, on the same Redis in the same run.

What a Django view or a script does: ``task.delay()`` from plain threads with no event loop,
no worker running (the enqueue side only). Each measurement runs in a fresh child process:
50 untimed calls per thread (connections, the loop thread), then ``--calls`` timed calls per
thread, from 1 thread and from 8 threads started together. Both frameworks keep their
defaults: Celery's Redis result backend subscribes to every task's result as it sends it;
asyncq's Redis backend subscribes only once the producer has waited on a result.

Every run uses its own key prefix on the Redis (deleted afterwards): asyncq's ``key_prefix``,
Celery's ``global_keyprefix``. ``--repeat`` interleaves the frameworks and reports medians; the
ratio is asyncq / Celery (above 1: asyncq is faster). Celery is not a dependency of asyncq: it
comes from benchmarks/requirements-peers.txt, in this interpreter or (``--celery-python``) in a
virtualenv of its own.

Usage: python benchmarks/sync_delay.py [--calls 2000] [--repeat 3] [--celery-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WARM_UP = 50
THREADS = (1, 8)


def redis_base() -> str:
    return os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379").rstrip("/") + "/0"


# -- the children: one framework, one thread count ------------------------------------------------


def asyncq_delay(prefix: str) -> Callable[[], Any]:
    from asyncq import App

    app = App("bench-sync", broker=f"{redis_base()}?key_prefix={prefix}")

    @app.task(name="noop")
    def noop() -> None:
        return None

    return noop.delay


def celery_delay(prefix: str) -> Callable[[], Any]:
    from celery import Celery

    app = Celery("bench-sync", broker=redis_base(), backend=redis_base())
    app.conf.update(
        broker_transport_options={"global_keyprefix": prefix},
        result_backend_transport_options={"global_keyprefix": prefix},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
    )

    @app.task(name="noop")
    def noop() -> None:
        return None

    return noop.delay


def child(framework: str, threads: int, calls: int, prefix: str) -> float:
    """Calls per second of ``threads`` threads each making ``calls`` timed ``delay()`` calls."""
    delay = asyncq_delay(prefix) if framework == "asyncq" else celery_delay(prefix)
    warm = threading.Barrier(threads + 1)
    go = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(WARM_UP):
                delay()
            warm.wait()
            go.wait()
            for _ in range(calls):
                delay()
        except BaseException as exc:
            errors.append(exc)
            raise

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    warm.wait()
    start = time.perf_counter()
    go.wait()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return threads * calls / elapsed


# -- the driver ------------------------------------------------------------------------------------


def delete_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_base())
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


def measure(python: str, framework: str, threads: int, calls: int) -> float:
    prefix = f"bench-sync-{framework}-{uuid.uuid4().hex[:8]}:"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [python, str(Path(__file__).resolve()), "--child", framework, "--threads", str(threads)]
    argv += ["--calls", str(calls), "--prefix", prefix]
    try:
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    finally:
        delete_prefix(prefix)
    if out.returncode != 0:
        raise SystemExit(f"{framework} ({threads} threads) failed:\n{out.stderr}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["rate"])


def find_celery(explicit: str | None) -> str | None:
    candidates = [explicit] if explicit else [sys.executable, str(Path.home() / "venvs/celery/bin/python")]
    for python in candidates:
        if python and Path(python).expanduser().exists():
            python = str(Path(python).expanduser())
            probe = subprocess.run(
                [python, "-c", "import celery"], capture_output=True, timeout=120, check=False
            )
            if probe.returncode == 0:
                return python
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per thread")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--celery-python", help="an interpreter that has Celery (default: this one, ~/venvs/celery)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"rate": child(args.child, args.threads, args.calls, args.prefix)}), flush=True)
        return
    celery_python = find_celery(args.celery_python)
    if celery_python is None:
        print("celery is not importable here nor in ~/venvs/celery: measuring asyncq alone", flush=True)
    pythons = {"asyncq": sys.executable, **({"celery": celery_python} if celery_python else {})}
    rates: dict[tuple[str, int], list[float]] = {}
    for run in range(args.repeat):
        for threads in THREADS:
            for framework, python in pythons.items():
                rate = measure(python, framework, threads, args.calls)
                rates.setdefault((framework, threads), []).append(rate)
                print(f"run {run + 1}: {framework:7} {threads} thread(s): {rate:9,.0f} delay()/s", flush=True)
    print(f"\nmedians of {args.repeat} run(s), {args.calls} timed calls per thread")
    print(f"{'threads':>7} | {'asyncq /s':>10} | {'celery /s':>10} | asyncq/celery")
    for threads in THREADS:
        mine = statistics.median(rates[("asyncq", threads)])
        theirs = statistics.median(rates[("celery", threads)]) if celery_python else None
        ratio = f"{mine / theirs:.2f}x" if theirs else "-"
        print(f"{threads:>7} | {mine:10,.0f} | {theirs or 0:10,.0f} | {ratio}")


if __name__ == "__main__":
    main()
