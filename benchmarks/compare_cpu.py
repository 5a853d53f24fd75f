"""asyncq against Celery and dramatiq on CPU-bound and mixed workloads, on the same local Redis.

Two workloads, the same task functions for every framework (``benchmarks/peers/_span.py``'s
pure-Python ``burn`` loop, ``--cpu-ms`` each, calibrated once here and passed to every worker
as an iteration count; io tasks sleep 0.5 s):

1. cpu: ``--cpu-tasks`` CPU tasks (default 2,000). asyncq: one ``asyncq run`` worker, the tasks
   on its process pool (``executor="process"``, one process per core); Celery: prefork
   ``-c <cores>``; dramatiq: ``--processes <cores> --threads 1``.
2. mixed: ``--mixed-cpu`` CPU tasks and ``--io-tasks`` io tasks (1,000 and 5,000), queued
   interleaved. asyncq: the same single worker at ``--concurrency`` 1,000 (process pool for
   CPU, event loop for io); Celery: two workers, prefork ``-c <cores>`` for CPU and threads
   ``-c 1,000`` for io; dramatiq: one tree ``<cores> x 1000/<cores>`` threads, and two trees
   (CPU ``<cores> x 1``, io ``1 x 1000``), the better counts.

All tasks are queued with the workers stopped; then the workers start. Each task sends its
start and end to Redis (one script call); the figure is wall seconds from the first task's
start to the last task's end, so start-up is left out (the ideal is printed beside it).
``--repeat`` interleaves the frameworks and reports medians; the table gives asyncq's ratio to
the best peer (peer seconds / asyncq seconds: above 1 is asyncq ahead). Peers come from
``benchmarks/requirements-peers.txt``; one that cannot be imported is skipped.

Usage: python benchmarks/compare_cpu.py [--repeat 2] [--only asyncq,celery] [--workloads cpu,mixed]
    [--cpu-tasks 2000] [--mixed-cpu 1000] [--io-tasks 5000] [--cpu-ms 10] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# The worker-process plumbing (process groups, logs, stop on exit) is compare_redis.py's.
from compare_redis import LOOPBACK, WorkerProcess, cleanup_on_exit  # noqa: E402
from peers._common import redis_url  # noqa: E402
from peers._span import COUNT_KEY, SPAN_ZSET, burn  # noqa: E402

FRAMEWORKS = {"asyncq": "peers.cpu_asyncq", "celery": "peers.cpu_celery", "dramatiq": "peers.cpu_dramatiq"}
WORKLOADS = ("cpu", "mixed")


def log(message: str) -> None:
    print(message, flush=True)


def calibrate(cpu_ms: float) -> int:
    """Iterations of ``burn`` that take ``cpu_ms`` here (best of 5, so a busy moment counts less)."""
    n = 20_000
    best = min(_timed(n) for _ in range(5))
    return max(1000, int(n * cpu_ms / 1000 / best))


def _timed(n: int) -> float:
    started = time.perf_counter()
    burn(n)
    return time.perf_counter() - started


def kinds_of(workload: str, args: argparse.Namespace) -> list[str]:
    if workload == "cpu":
        return ["cpu"] * args.cpu_tasks
    total = args.mixed_cpu + args.io_tasks
    # Interleaved evenly, so that every stretch of the queue holds both kinds.
    return ["cpu" if (i * args.mixed_cpu) % total < args.mixed_cpu else "io" for i in range(total)]


class Bench:
    def __init__(self, name: str, module: types.ModuleType, args: argparse.Namespace) -> None:
        self.name, self.module, self.args = name, module, args
        self.url = redis_url(module.DB)
        self.notes: list[str] = []

    def flush(self) -> None:
        client = redis.Redis.from_url(self.url)
        try:
            client.flushdb()
        finally:
            client.close()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        env.update(
            BENCH_REDIS=self.args.redis,
            BENCH_SPAN_URL=self.url,
            BENCH_CPU_LOOPS=str(self.args.loops),
            BENCH_CORES=str(self.args.cores),
        )
        return env

    async def wait_span(self, workers: list[WorkerProcess], target: int) -> float:
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + self.args.timeout
        done = 0
        try:
            while time.monotonic() < deadline:
                done = int(client.get(COUNT_KEY) or 0)
                if done >= target:
                    first = client.zscore(SPAN_ZSET, "first")
                    last = client.zscore(SPAN_ZSET, "last")
                    assert first is not None, "the span's start is missing"
                    assert last is not None, "the span's end is missing"
                    return float(last) - float(first)
                for worker in workers:
                    worker.check_alive()
                await asyncio.sleep(0.05)
        finally:
            client.close()
        raise TimeoutError(f"{done} of {target} done after {self.args.timeout:.0f}s\n{workers[0].tail()}")

    async def run_variant(self, workload: str, variant: str, commands: list[list[str]]) -> float:
        kinds = kinds_of(workload, self.args)
        self.flush()
        await self.module.fill(kinds)
        env = self.env()
        log_dir = Path(self.args.log_dir)
        slug = variant.replace(" ", "").replace("+", "_")
        with contextlib.ExitStack() as stack:
            workers = [
                stack.enter_context(
                    WorkerProcess(argv, env, log_dir / f"{self.name}-{workload}-{slug}-{i}.log")
                )
                for i, argv in enumerate(commands)
            ]
            seconds = await self.wait_span(workers, len(kinds))
        for worker in workers:
            errors = [line for line in worker.text().splitlines() if "Traceback" in line or "ERROR" in line]
            if errors:
                self.notes.append(f"{workload} {variant}: {len(errors)} error lines, e.g. {errors[0][:120]}")
        self.flush()
        return seconds

    async def run(self) -> dict[str, dict[str, float]]:
        """workload -> variant -> seconds."""
        out: dict[str, dict[str, float]] = {}
        for workload in self.args.workloads:
            for variant, commands in self.module.variants(workload, self.args.concurrency).items():
                try:
                    seconds = await self.run_variant(workload, variant, commands)
                except Exception as exc:
                    log(f"  {self.name} {workload} [{variant}]: FAILED: {type(exc).__name__}: {exc}")
                    self.notes.append(f"{workload} {variant} failed: {type(exc).__name__}")
                    continue
                out.setdefault(workload, {})[variant] = seconds
                log(f"  {self.name} {workload} [{variant}]: {seconds:.2f} s")
        return out


def ideal(workload: str, args: argparse.Namespace) -> float:
    """The span if every core burned without a break and the sleeps overlapped perfectly."""
    if workload == "cpu":
        return args.cpu_tasks * args.cpu_ms / 1000 / args.cores
    io_waves = 0.5 * -(-args.io_tasks // args.concurrency)
    return max(args.mixed_cpu * args.cpu_ms / 1000 / args.cores, io_waves)


def summarize(runs: dict[str, list[dict[str, dict[str, float]]]]) -> dict[str, dict[str, float]]:
    """workload -> "framework [variant]" -> median seconds."""
    table: dict[str, dict[str, float]] = {}
    for name, name_runs in runs.items():
        for workload in WORKLOADS:
            variants: dict[str, list[float]] = {}
            for run in name_runs:
                for variant, seconds in run.get(workload, {}).items():
                    variants.setdefault(variant, []).append(seconds)
            for variant, values in variants.items():
                table.setdefault(workload, {})[f"{name} [{variant}]"] = statistics.median(values)
    return table


def print_table(table: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    log("")
    head = ("workload", "framework [configuration]", "seconds", "vs ideal", "asyncq ahead")
    log(f"{head[0]:<8} {head[1]:<44} {head[2]:>8} {head[3]:>9} {head[4]:>13}")
    for workload, rows in table.items():
        ours = next((s for label, s in rows.items() if label.startswith("asyncq ")), None)
        best = ideal(workload, args)
        for label, seconds in rows.items():
            ratio = f"{seconds / ours:.2f}x" if ours and not label.startswith("asyncq ") else ""
            log(f"{workload:<8} {label:<44} {seconds:>8.2f} {seconds / best:>8.2f}x {ratio:>13}")
        peers = {label: s for label, s in rows.items() if not label.startswith("asyncq ")}
        if ours and peers:
            who = min(peers, key=peers.__getitem__)
            ratio = peers[who] / ours
            log(f"{'':<8} asyncq {ours:.2f} s vs best peer {who} {peers[who]:.2f} s: {ratio:.2f}x")
        log(f"{'':<8} ideal {best:.2f} s")
    log(
        f"burn: {args.loops:,} iterations = {args.cpu_ms:g} ms here; cores {args.cores}; "
        f"medians of {args.repeat} run(s); ratio = peer seconds / asyncq seconds (> 1: asyncq ahead)"
    )


async def main(args: argparse.Namespace) -> None:
    modules: dict[str, types.ModuleType] = {}
    notes: dict[str, list[str]] = {}
    for name in args.only:
        try:
            modules[name] = importlib.import_module(FRAMEWORKS[name])
        except ImportError as exc:
            notes[name] = [f"skipped: not importable with {sys.executable} ({exc})"]
            log(f"{name}: {notes[name][0]}")
    runs: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in modules}
    for repeat in range(args.repeat):
        for name, module in modules.items():
            log(f"[run {repeat + 1}/{args.repeat}] {name}")
            bench = Bench(name, module, args)
            runs[name].append(await bench.run())
            notes.setdefault(name, []).extend(n for n in bench.notes if n not in notes.get(name, []))
    table = summarize(runs)
    log(f"worker logs: {args.log_dir}")
    print_table(table, args)
    flat = [(name, note) for name, items in notes.items() for note in items]
    if flat:
        log("\nnotes:")
        for name, note in flat:
            log(f"  {name}: {note}")
    if args.json_out:
        payload: dict[str, Any] = {
            "seconds": table,
            "ideal": {workload: ideal(workload, args) for workload in table},
            "params": {
                "cpu_tasks": args.cpu_tasks,
                "mixed_cpu": args.mixed_cpu,
                "io_tasks": args.io_tasks,
                "cpu_ms": args.cpu_ms,
                "loops": args.loops,
                "cores": args.cores,
                "repeat": args.repeat,
            },
            "notes": flat,
        }
        Path(args.json_out).write_text(json.dumps(payload, indent=1))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default=",".join(FRAMEWORKS), help="comma-separated: " + ", ".join(FRAMEWORKS)
    )
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: cpu, mixed")
    parser.add_argument("--repeat", type=int, default=1, help="runs of everything; medians are reported")
    parser.add_argument("--cpu-tasks", type=int, default=2000, help="tasks of the cpu workload")
    parser.add_argument("--mixed-cpu", type=int, default=1000, help="CPU tasks of the mixed workload")
    parser.add_argument(
        "--io-tasks", type=int, default=5000, help="io (sleep 0.5 s) tasks of the mixed workload"
    )
    parser.add_argument(
        "--cpu-ms", type=float, default=10.0, help="milliseconds of one CPU task, calibrated here"
    )
    parser.add_argument(
        "--concurrency", type=int, default=1000, help="tasks at once for io (asyncq's --concurrency)"
    )
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="processes of every CPU pool")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="loopback Redis, without a db")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds any one workload may take")
    parser.add_argument("--json-out", help="also write the medians to this file as JSON")
    args = parser.parse_args()
    args.only = [n.strip() for n in args.only.split(",") if n.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for bad in set(args.only) - set(FRAMEWORKS):
        parser.error(f"unknown framework {bad!r}; choose from {', '.join(FRAMEWORKS)}")
    for bad in set(args.workloads) - set(WORKLOADS):
        parser.error(f"unknown workload {bad!r}; choose from cpu, mixed")
    host = urlsplit(args.redis).hostname or ""
    if host not in LOOPBACK:
        parser.error(f"--redis must be a loopback address, not {host!r}")
    os.environ["BENCH_REDIS"] = args.redis  # read by peers._common.redis_url, here and in workers
    os.environ["BENCH_CORES"] = str(args.cores)  # the peer modules size their pools from it
    args.log_dir = tempfile.mkdtemp(prefix="asyncq-compare-cpu-")
    args.loops = calibrate(args.cpu_ms)
    return args


if __name__ == "__main__":
    arguments = parse_args()
    try:
        with cleanup_on_exit():
            asyncio.run(main(arguments))
    except KeyboardInterrupt:
        print("interrupted; worker processes stopped", file=sys.stderr)
        sys.exit(130)
