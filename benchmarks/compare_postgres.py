"""asyncq's postgresql:// broker against procrastinate and SAQ's postgres queue, same server.

Each framework gets a database of its own on the server (created here, dropped after), its
worker runs in this process next to the producer (the same for all three), and the workloads
mirror ``benchmarks/compare_redis.py``:

1. enqueue: ``--enqueues`` sequential single-call enqueues, each awaited, no worker running
   (after 50 untimed ones) -> enqueues/s;
2. drain: ``--tasks`` no-op tasks queued with the worker stopped (in batches: asyncq
   ``send_many``, procrastinate ``batch_defer_async``, SAQ ``enqueue`` calls gathered 500 at a
   time), then the worker is started -> tasks/s from the first task's start to the last one's
   end, both taken inside the tasks (start-up is not counted);
3. round trip: ``--round-trips`` sequential enqueue -> completion seen by the producer against
   a warm worker (after 50 untimed) -> p50 / p99 ms. asyncq awaits its result (postgresql://
   result backend, LISTEN/NOTIFY). Neither peer notifies a producer of a job's completion on
   PostgreSQL, so their producers poll every millisecond: SAQ with ``queue.listen(...,
   poll_interval=0.001)`` (its default is 0.5 s), procrastinate ``get_job_status_async``.

Every worker runs ``--concurrency`` jobs at once (default 50). ``--synchronous-commit off`` sets
that on each framework's database (``ALTER DATABASE``) and in asyncq's URL (its sessions set
their own, ``on`` by default, over the database's), the same for all three: commits stop
waiting for the disk flush, which otherwise bounds every workload on a busy disk. The table gives asyncq's
advantage over each peer (rates asyncq/peer, times peer/asyncq: above 1 is asyncq ahead) and
the ratio to the best peer. ``--repeat`` interleaves the frameworks and reports medians.
procrastinate and SAQ come from ``benchmarks/requirements-postgres.txt``, installed in a
virtualenv of their own (see that file); a peer that cannot be imported is skipped.

Usage: python benchmarks/compare_postgres.py [--only asyncq,saq] [--repeat 3]
    [--postgres postgresql://postgres@127.0.0.1:5432/test] [--tasks 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from _common import Countdown

WARM_UP = 50
METRICS = ("drain", "p50", "p99", "enqueue")
HIGHER_IS_BETTER = {"drain": True, "p50": False, "p99": False, "enqueue": True}
Result = dict[str, float | None]


class Framework(Protocol):
    """One framework's client and in-process worker on its own database."""

    counter: Countdown

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def fill(self, n: int) -> None: ...
    async def enqueue(self) -> None: ...
    async def round_trip(self) -> None: ...
    def worker(self, concurrency: int) -> contextlib.AbstractAsyncContextManager[None]: ...


def database_url(server: str, database: str) -> str:
    parts = urlsplit(server)
    return urlunsplit(parts._replace(path=f"/{database}"))


class AsyncqBench:
    def __init__(self, url: str) -> None:
        from asyncq import App

        self.app = App("bench", broker=url, backend=url)
        self.counter = Countdown(0)

        @self.app.task(name="noop")
        async def noop() -> None:
            self.counter.tick()

        @self.app.task(name="echo")
        async def echo() -> int:
            return 1

        self.noop, self.echo = noop, echo

    async def open(self) -> None:
        await self.app.connect()

    async def close(self) -> None:
        await self.app.aclose()

    async def fill(self, n: int) -> None:
        for start in range(0, n, 1000):
            await self.app.send_many([self.noop.build_message() for _ in range(min(1000, n - start))])

    async def enqueue(self) -> None:
        await self.noop.enqueue()

    async def round_trip(self) -> None:
        await (await self.echo.enqueue()).get(timeout=10)

    @contextlib.asynccontextmanager
    async def worker(self, concurrency: int) -> AsyncIterator[None]:
        async with self.app.worker(concurrency=concurrency):
            yield


class ProcrastinateBench:
    def __init__(self, url: str, concurrency: int) -> None:
        import procrastinate

        self.connector = procrastinate.PsycopgConnector(conninfo=url, min_size=4, max_size=concurrency + 10)
        self.app = procrastinate.App(connector=self.connector)
        self.counter = Countdown(0)

        @self.app.task(name="noop")
        async def noop() -> None:
            self.counter.tick()

        @self.app.task(name="echo")
        async def echo() -> int:
            return 1

        self.noop, self.echo = noop, echo

    async def open(self) -> None:
        await self.app.open_async()
        await self.app.schema_manager.apply_schema_async()

    async def close(self) -> None:
        await self.app.close_async()

    async def fill(self, n: int) -> None:
        for start in range(0, n, 1000):
            await self.noop.batch_defer_async(*({} for _ in range(min(1000, n - start))))

    async def enqueue(self) -> None:
        await self.noop.defer_async()

    async def round_trip(self) -> None:
        job_id = await self.echo.defer_async()
        deadline = time.monotonic() + 10
        while (await self.app.job_manager.get_job_status_async(job_id)).value != "succeeded":
            if time.monotonic() > deadline:
                raise TimeoutError(f"procrastinate job {job_id} not done")
            await asyncio.sleep(0.001)

    @contextlib.asynccontextmanager
    async def worker(self, concurrency: int) -> AsyncIterator[None]:
        run = asyncio.create_task(
            self.app.run_worker_async(concurrency=concurrency, install_signal_handlers=False),
            name="bench.procrastinate",
        )
        try:
            yield
        finally:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run


class SaqBench:
    def __init__(self, url: str, concurrency: int) -> None:
        from saq.queue.postgres import PostgresQueue

        self.queue = PostgresQueue(url=url, min_size=4, max_size=concurrency + 10)
        self.counter = Countdown(0)

    async def _noop(self, ctx: dict[str, Any]) -> None:
        self.counter.tick()

    async def _echo(self, ctx: dict[str, Any]) -> int:
        return 1

    async def open(self) -> None:
        await self.queue.connect()

    async def close(self) -> None:
        await asyncio.wait_for(self.queue.disconnect(), 30)

    async def fill(self, n: int) -> None:
        for start in range(0, n, 500):
            await asyncio.gather(*(self.queue.enqueue("noop") for _ in range(min(500, n - start))))

    async def enqueue(self) -> None:
        await self.queue.enqueue("noop")

    async def round_trip(self) -> None:
        # SAQ's postgres queue has no completion notification: its listen (and apply) re-read
        # the job every poll_interval (0.5 s by default); 1 ms here, as for procrastinate.
        from saq.job import TERMINAL_STATUSES

        job = await self.queue.enqueue("echo")
        assert job is not None
        await self.queue.listen(
            [job.key], lambda _key, status: status in TERMINAL_STATUSES, timeout=10, poll_interval=0.001
        )

    @contextlib.asynccontextmanager
    async def worker(self, concurrency: int) -> AsyncIterator[None]:
        from saq import Worker

        worker = Worker(
            self.queue, functions=[("noop", self._noop), ("echo", self._echo)], concurrency=concurrency
        )
        run = asyncio.create_task(worker.start(), name="bench.saq")
        try:
            yield
        finally:
            # Bounded: a SAQ postgres worker was once seen never returning from stop().
            try:
                await asyncio.wait_for(worker.stop(), 30)
            except TimeoutError:
                print("  saq: worker.stop() took over 30 s; cancelling the worker", flush=True)
            run.cancel()
            await asyncio.wait({run}, timeout=10)


FRAMEWORKS: dict[str, tuple[str, Callable[[str, int], Framework]]] = {
    "asyncq": ("asyncpg", lambda url, _: AsyncqBench(url)),
    "procrastinate": ("procrastinate", ProcrastinateBench),
    "saq": ("saq", SaqBench),
}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


@contextlib.asynccontextmanager
async def fresh_database(server: str, name: str, synchronous_commit: str) -> AsyncIterator[str]:
    """A database of its own for one framework's workload, dropped afterwards."""
    database = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        # A setting of this database only: every framework's sessions get it alike.
        await admin.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = {synchronous_commit}')
        try:
            yield database_url(server, database)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def opened(name: str, url: str, concurrency: int) -> AsyncIterator[Framework]:
    bench = FRAMEWORKS[name][1](url, concurrency)
    await bench.open()
    try:
        yield bench
    finally:
        await bench.close()


async def measure_enqueue(bench: Framework, n: int) -> float:
    for _ in range(WARM_UP):
        await bench.enqueue()
    started = time.perf_counter()
    for _ in range(n):
        await bench.enqueue()
    return n / (time.perf_counter() - started)


async def measure_drain(bench: Framework, n: int, concurrency: int, timeout: float) -> float:
    await bench.fill(n)
    bench.counter = Countdown(n)
    async with bench.worker(concurrency):
        await asyncio.wait_for(bench.counter.done.wait(), timeout)
        last = time.perf_counter()
    return n / (last - bench.counter.first)


async def measure_round_trips(bench: Framework, n: int, concurrency: int) -> tuple[float, float]:
    async with bench.worker(concurrency):
        for _ in range(WARM_UP):
            await bench.round_trip()
        times = []
        for _ in range(n):
            started = time.perf_counter()
            await bench.round_trip()
            times.append(time.perf_counter() - started)
    return percentile(times, 50) * 1000, percentile(times, 99) * 1000


def database(args: argparse.Namespace, name: str) -> contextlib.AbstractAsyncContextManager[str]:
    return fresh_database(args.postgres, name, args.synchronous_commit)


def framework_url(name: str, url: str, synchronous_commit: str) -> str:
    """``url`` as framework ``name`` takes it.

    asyncq sets ``synchronous_commit`` on its own sessions (its URL option, ``on`` unless
    told), which overrides the database's setting: the URL carries the one given here.
    """
    if name != "asyncq":
        return url
    parts = urlsplit(url)
    query = "&".join(filter(None, (parts.query, f"synchronous_commit={synchronous_commit}")))
    return urlunsplit(parts._replace(query=query))


async def run_framework(name: str, args: argparse.Namespace) -> Result:
    result: Result = dict.fromkeys(METRICS)
    sync = args.synchronous_commit
    async with (
        database(args, name) as db,
        opened(name, framework_url(name, db, sync), args.concurrency) as bench,
    ):
        result["enqueue"] = await measure_enqueue(bench, args.enqueues)
        print(f"  {name} enqueue: {result['enqueue']:,.0f}/s", flush=True)
    async with (
        database(args, name) as db,
        opened(name, framework_url(name, db, sync), args.concurrency) as bench,
    ):
        result["drain"] = await measure_drain(bench, args.tasks, args.concurrency, args.timeout)
        print(f"  {name} drain: {result['drain']:,.0f} tasks/s", flush=True)
    async with (
        database(args, name) as db,
        opened(name, framework_url(name, db, sync), args.concurrency) as bench,
    ):
        result["p50"], result["p99"] = await measure_round_trips(bench, args.round_trips, args.concurrency)
        print(f"  {name} round trip: p50 {result['p50']:.2f} ms, p99 {result['p99']:.2f} ms", flush=True)
    return result


def advantage(metric: str, ours: float | None, theirs: float | None) -> float | None:
    if not ours or not theirs:
        return None
    return ours / theirs if HIGHER_IS_BETTER[metric] else theirs / ours


def fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if metric in ("drain", "enqueue") else f"{value:.2f}"


def print_table(results: dict[str, Result]) -> None:
    headers = ("framework", "drain tasks/s", "p50 ms", "p99 ms", "enqueue/s")
    widths = (15, 20, 16, 16, 18)
    print()
    print(
        "".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    ours = results.get("asyncq")
    for name, result in results.items():
        cells = [name.ljust(widths[0])]
        for metric, width in zip(METRICS, widths[1:], strict=True):
            cell = fmt(metric, result[metric])
            ratio = advantage(metric, ours[metric], result[metric]) if ours and name != "asyncq" else None
            if ratio is not None:
                cell += f" ({ratio:.2f}x)"
            cells.append(cell.rjust(width))
        print("".join(cells))
    peers = {name: result for name, result in results.items() if name != "asyncq"}
    if ours and peers:
        print("\nasyncq against the best peer (above 1: asyncq ahead)")
        for metric in METRICS:
            values = [(r[metric], n) for n, r in peers.items() if r[metric]]
            if not values:
                continue
            best, who = (max if HIGHER_IS_BETTER[metric] else min)(values)
            ratio = advantage(metric, ours[metric], best)
            print(
                f"  {metric:<8} {fmt(metric, ours[metric]):>10} vs {who} {fmt(metric, best):>10}: "
                f"{ratio:.2f}x"
                if ratio
                else f"  {metric:<8} -"
            )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(FRAMEWORKS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--tasks", type=int, default=10_000, help="drain: tasks queued")
    parser.add_argument("--round-trips", type=int, default=500)
    parser.add_argument("--enqueues", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=50, help="jobs each worker runs at once")
    parser.add_argument(
        "--synchronous-commit",
        choices=("on", "off"),
        default="on",
        help="set on each framework's database: off takes the disk flush out of every commit",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="drain: give up after this long")
    parser.add_argument("--json-out", help="also write the medians to this file as JSON")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in FRAMEWORKS]
    if unknown:
        raise SystemExit(f"unknown framework {unknown[0]!r}; choose from {', '.join(FRAMEWORKS)}")
    chosen = []
    for name in names:
        if importlib.util.find_spec(FRAMEWORKS[name][0]) is None:
            print(f"{name}: skipped, not importable (pip install -r benchmarks/requirements-postgres.txt)")
        else:
            chosen.append(name)
    runs: dict[str, list[Result]] = {name: [] for name in chosen}
    for round_ in range(args.repeat):
        for name in chosen:
            print(f"[{round_ + 1}/{args.repeat}] {name}", flush=True)
            try:
                runs[name].append(await run_framework(name, args))
            except Exception as exc:  # one framework failing must not lose the others' numbers
                print(f"  {name} FAILED: {type(exc).__name__}: {exc}", flush=True)
    results: dict[str, Result] = {}
    for name, name_runs in runs.items():
        results[name] = {
            metric: statistics.median(values)
            if (values := [r[metric] for r in name_runs if r[metric]])
            else None
            for metric in METRICS
        }
    print(
        f"\ntasks={args.tasks} round_trips={args.round_trips} enqueues={args.enqueues} "
        f"concurrency={args.concurrency} synchronous_commit={args.synchronous_commit} "
        f"repeat={args.repeat} (medians)"
    )
    print_table(results)
    if args.json_out:
        params = {"tasks": args.tasks, "round_trips": args.round_trips, "enqueues": args.enqueues}
        params |= {"concurrency": args.concurrency, "synchronous_commit": args.synchronous_commit}
        payload = {"results": results, "higher_is_better": HIGHER_IS_BETTER, "params": params}
        Path(args.json_out).write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
