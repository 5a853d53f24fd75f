"""The worker's own cost per task: an embedded drain, per asyncq source tree, interleaved.

Each run queues --tasks no-op tasks (not timed), starts an embedded worker (concurrency 500)
and times the drain: wall-clock tasks/s and this process's CPU microseconds per task (the
steadier figure on a loaded machine). With --trees, every tree runs in its own process
(PYTHONPATH set to it), tree after tree, --rounds times; the medians and each tree's ratio to
the first one are printed.

Usage: python benchmarks/per_task.py [--url memory://] [--tasks 20000] [--rounds 3]
       [--trees base=/path/to/old/checkout,new=.] [--loop asyncio|uvloop] [--profile FILE]

--pause S (with --one or no --trees) waits S seconds between the fill and the drain, saying so
on stderr, so that an outside profiler can cover the drain alone: under
`valgrind --tool=callgrind --instr-atstart=no`, run `callgrind_control -i on <pid>` then.

--loop uvloop runs the drain on uvloop, the loop `asyncq run` picks when it is installed
(worker_loop=auto); the default is asyncio's own, as an app embedding the worker has.

--profile runs one drain of this tree with the worker under cProfile (the enqueue is not
profiled) and prints the 25 functions with the most time of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

from _common import Countdown, send_all

from asyncq import App


async def drain(
    url: str, n: int, profile: cProfile.Profile | None = None, pause: float = 0.0
) -> tuple[float, float]:
    """One drain: (tasks per wall-clock second, CPU microseconds per task), the drain profiled."""
    options = {"key_prefix": f"asyncq-bench-per-task-{uuid.uuid4().hex[:8]}"}
    # A unique prefix, and results that expire soon: the shared Redis keeps nothing of the run.
    config = {
        "broker_transport_options": options,
        "result_backend_transport_options": options,
        "result_expires": 60,
    }
    if url.startswith("amqp"):
        # A queue of its own on the shared server (deleted below); results over rpc://.
        config = {"task_default_queue": f"bench-per-task-{uuid.uuid4().hex[:8]}"}
    app = App("bench-per-task", broker=url, config=config if url.startswith(("redis", "amqp")) else {})
    runs = Countdown(n)

    @app.task
    async def noop() -> None:
        runs.tick()

    await send_all(app, [noop.build_message() for _ in range(n)])
    if pause:
        # For an outside profiler to start now (e.g. `callgrind_control -i on <pid>`).
        print(f"queued {n}; draining in {pause:g}s", file=sys.stderr, flush=True)
        await asyncio.sleep(pause)
    if profile is not None:
        profile.enable()
    wall, cpu = time.perf_counter(), time.process_time()
    async with app.worker(concurrency=500):
        await asyncio.wait_for(runs.done.wait(), 600)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if profile is not None:
        profile.disable()
    delete_queue = getattr(app.broker, "delete_queue", None)
    if url.startswith("amqp") and delete_queue is not None:
        await delete_queue(app.conf.task_default_queue)
    await app.aclose()
    return n / wall, cpu / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="memory://")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--trees", default="", help="name=path,...: source trees to compare (first: baseline)"
    )
    parser.add_argument(
        "--profile", metavar="FILE", help="one drain under cProfile: stats to FILE, the top 25 printed"
    )
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument(
        "--pause", type=float, default=0.0, help="seconds to wait between the fill and the drain (one run)"
    )
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child's single run
    args = parser.parse_args()
    if args.profile:
        import pstats

        profile = cProfile.Profile()
        rate, micros = asyncio.run(drain(args.url, args.tasks, profile))
        profile.dump_stats(args.profile)
        print(f"{rate:,.0f} tasks/s, {micros:.1f} us CPU/task (under the profiler)")
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(25)
        return
    if args.one or not args.trees:
        if args.loop == "uvloop":
            import uvloop

            rate, micros = uvloop.run(drain(args.url, args.tasks, pause=args.pause))
        else:
            rate, micros = asyncio.run(drain(args.url, args.tasks, pause=args.pause))
        print(
            json.dumps({"rate": rate, "cpu_us": micros})
            if args.one
            else f"{rate:,.0f} tasks/s, {micros:.1f} us CPU/task"
        )
        return
    trees = dict(item.split("=", 1) for item in args.trees.split(","))
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for round_number in range(args.rounds):
        for name, path in trees.items():
            env = {**os.environ, "PYTHONPATH": os.path.abspath(path)}
            # The child is a worker process, as `asyncq run` is: its default (auto) would not
            # freeze an embedded worker, so say it (older trees ignore the variable, with a warning).
            env.setdefault("ASYNCQ_WORKER_GC_FREEZE", "true")
            command = [sys.executable, __file__, "--one", "--url", args.url, "--tasks", str(args.tasks)]
            command += ["--loop", args.loop]
            out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=True)
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            results[name].append((figures["rate"], figures["cpu_us"]))
            rate, micros = figures["rate"], figures["cpu_us"]
            print(f"round {round_number + 1} {name}: {rate:,.0f} tasks/s, {micros:.1f} us CPU/task")
    first = next(iter(trees))
    base_rate = statistics.median(r for r, _ in results[first])
    base_cpu = statistics.median(c for _, c in results[first])
    for name, runs in results.items():
        rate, micros = statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs)
        print(
            f"{name:10} median {rate:9,.0f} tasks/s ({rate / base_rate:.2f}x {first}), "
            f"{micros:6.1f} us CPU/task ({micros / base_cpu:.2f}x {first})"
        )


if __name__ == "__main__":
    main()
