"""The producer's CPU cost per awaited ``noop.enqueue()``, on memory:// and sqlite://, per source tree.

Run with ``python benchmarks/enqueue_cost.py [--trees before=/path/to/main,after=.] [--calls 5000]
[--rounds 5] [--brokers memory,sqlite]``.

Each measurement is a fresh process (``PYTHONPATH=<tree>``) that makes 200 untimed calls, then
``--calls`` sequential awaited ``noop.enqueue()`` calls with no worker, and reports the process
CPU time per call (``time.process_time``: less noisy than wall time on a shared machine) and
the wall time per call. Rounds interleave the trees (the order rotates each round); the summary
shows each tree's median and range, and each tree's ratio to the first tree's median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


async def _measure(url: str, calls: int) -> dict[str, float]:
    from asyncq import App

    app = App("bench", broker=url)

    @app.task
    async def noop() -> None:
        return None

    await app.connect()
    try:
        for _ in range(200):
            await noop.enqueue()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(calls):
            await noop.enqueue()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await app.aclose()
    return {"cpu_us": cpu / calls * 1e6, "wall_us": wall / calls * 1e6}


def _child(broker: str, calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = "memory://" if broker == "memory" else f"sqlite:///{tmp}/queue.db"
        print(json.dumps(asyncio.run(_measure(url, calls))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trees", default="after=.", help="name=path of asyncq source trees, comma-separated"
    )
    parser.add_argument("--brokers", default="memory,sqlite")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.calls)
        return
    trees = [spec.split("=", 1) for spec in args.trees.split(",")]
    brokers = args.brokers.split(",")
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    for round_ in range(args.rounds):
        order = trees[round_ % len(trees) :] + trees[: round_ % len(trees)]
        for broker in brokers:
            for name, path in order:
                env = {**os.environ, "PYTHONPATH": str(Path(path).resolve())}
                out = subprocess.run(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--child",
                        broker,
                        "--calls",
                        str(args.calls),
                    ],
                    env=env,
                    cwd=HERE,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                samples.setdefault((broker, name), []).append(json.loads(out.strip().splitlines()[-1]))
    print(f"load average {os.getloadavg()[0]:.2f}; {args.rounds} rounds of {args.calls} calls")
    cpu_head, wall_head = "CPU us/call median [range]", "wall us/call median [range]"
    print(f"{'broker':8} {'tree':10} {cpu_head:>32} {wall_head:>32}  ratio")
    for broker in brokers:
        base = None
        for name, _ in trees:
            runs = samples[(broker, name)]
            cells = []
            for key in ("cpu_us", "wall_us"):
                values = [r[key] for r in runs]
                cells.append(f"{statistics.median(values):8.1f} [{min(values):.1f}-{max(values):.1f}]")
            cpu = statistics.median(r["cpu_us"] for r in runs)
            base = base or cpu
            print(f"{broker:8} {name:10} {cells[0]:>32} {cells[1]:>32}  {cpu / base:.2f}x")


if __name__ == "__main__":
    main()
