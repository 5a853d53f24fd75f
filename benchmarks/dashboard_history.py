"""The dashboard with a large history: RSS after folding events, and the tasks page's response time.

Feeds ``--tasks`` tasks (three events each: received, started, succeeded or failed) into a
fresh history file in batches of 500, as the dashboard's event reader does, then serves the
dashboard app in-process (httpx over ASGI, no network) and times its pages. The baseline is
the same pages over a history of ``--baseline`` tasks, measured in the same run; the ratio says
how the page time grows with the history.

Prints: RSS before and after feeding (and its growth), the fold rate, and per page (the task
list, filtered by state, by name, searched by id, one task's detail) the median time over
``--runs`` requests with each history size.

Usage: python benchmarks/dashboard_history.py [--tasks 100000] [--baseline 1000] [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from asyncq import App
from asyncq.dashboard import create_app
from asyncq.dashboard.history import TaskHistory


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def feed(history: TaskHistory, count: int, start: float) -> str:
    """Fold ``count`` tasks in; return one task id (for the detail page)."""
    batch: list[dict[str, Any]] = []
    some_id = ""
    for n in range(count):
        task_id = str(uuid.uuid4())
        some_id = some_id or task_id
        at = start + n * 1e-3
        common = {"uuid": task_id, "hostname": f"w{n % 4}", "name": f"app.task{n % 10}", "queue": "q",
                  "retries": 0, "root_id": task_id, "parent_id": None}  # fmt: skip
        outcome = (
            {
                "type": "task-failed",
                "exception_type": "ValueError",
                "exception_message": "bad",
                "runtime": 0.1,
            }
            if n % 20 == 0
            else {"type": "task-succeeded", "runtime": 0.01}
        )
        batch += [
            {**common, "type": "task-received", "timestamp": at, "args": [n, "payload"], "kwargs": {}},
            {**common, "type": "task-started", "timestamp": at + 1e-4},
            {**common, **outcome, "timestamp": at + 2e-4},
        ]
        if len(batch) >= 500:
            history.add_sync(batch)
            batch = []
    history.add_sync(batch)
    return some_id


async def time_pages(path: Path, some_id: str, limit: int, runs: int) -> dict[str, float]:
    app = App("bench-dashboard", broker="memory://", backend="memory://")
    web = create_app(app, history_path=path, history_limit=limit)
    pages = {
        "tasks": "/tasks",
        "tasks?state=FAILURE": "/tasks?state=FAILURE",
        "tasks?name=app.task3": "/tasks?name=app.task3",
        "tasks?q=<id prefix>": f"/tasks?q={some_id[:8]}",
        "tasks/<id>": f"/tasks/{some_id}",
        "api/tasks": "/api/tasks",
    }
    found = {}
    transport = httpx.ASGITransport(app=web)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        for label, url in pages.items():
            (await http.get(url)).raise_for_status()  # warm up
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                response = await http.get(url)
                times.append(time.perf_counter() - t0)
                response.raise_for_status()
            found[label] = statistics.median(times)
    web.state.dashboard.history.close()
    await app.aclose()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        start = time.time() - args.tasks * 1e-3
        base_path = Path(folder, "baseline.sqlite3")
        base = TaskHistory(base_path, limit=args.tasks)
        base_id = feed(base, args.baseline, start)
        base.close()
        big_path = Path(folder, "big.sqlite3")
        big = TaskHistory(big_path, limit=args.tasks)
        gc.collect()
        before = rss()
        t0 = time.perf_counter()
        big_id = feed(big, args.tasks, start)
        elapsed = time.perf_counter() - t0
        gc.collect()
        after = rss()
        big.close()
        events_fed = args.tasks * 3
        rate = events_fed / elapsed
        print(f"fed {events_fed:,} events ({args.tasks:,} tasks) in {elapsed:.1f} s: {rate:,.0f} events/s")
        grew = (after - before) / 1e6
        print(f"RSS before {before / 1e6:.1f} MB, after {after / 1e6:.1f} MB (grew {grew:.1f} MB)")
        print(f"history file: {big_path.stat().st_size / 1e6:.1f} MB")
        baseline = asyncio.run(time_pages(base_path, base_id, args.tasks, args.runs))
        measured = asyncio.run(time_pages(big_path, big_id, args.tasks, args.runs))
        print(f"{'page':24} {args.baseline:>10,} tasks {args.tasks:>10,} tasks   ratio")
        for label, seconds in measured.items():
            print(
                f"{label:24} {baseline[label] * 1000:>13.1f} ms {seconds * 1000:>13.1f} ms"
                f" {seconds / baseline[label]:>7.2f}"
            )


if __name__ == "__main__":
    main()
