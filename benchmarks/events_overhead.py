"""What task events cost: the no-op drain rate on Redis with events off and on, in one run.

Each drain queues --tasks no-op tasks (not timed), then starts an embedded worker and times from
the first task's start to the last one's end, in wall-clock time and in this process's CPU
time. Each round drains once with events off and once on, in alternating order (off-on, then
on-off, ...), so the machine's load drifts over both alike; before each, a full garbage
collection, so that no drain pays for collecting what an earlier one left. Printed: the medians of each and
their ratio, and the median and range of the rounds' own on/off ratios (the spread). With
events on, the worker sends task-received, -started and -succeeded for every task (and worker
events) to the Redis stream; the target is a ratio of at least 0.90. Last, the emitter alone:
its three hooks per task and the batch encoding, timed on their own (no worker, no Redis; the
best of 5), in microseconds per task and as a share of an events-off drain's CPU per task: a
figure the machine's noise moves far less than the drains'.

Usage: python benchmarks/events_overhead.py [--url redis://127.0.0.1:6379/0] [--tasks 20000]
       [--rounds 7] [--concurrency 500] [--loop auto]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import statistics
import time
import uuid

from _common import Countdown, delete_prefix, send_all

from asyncq import App
from asyncq.events import EventEmitter, decode_batch
from asyncq.message import Message


async def drain(url: str, prefix: str, n: int, concurrency: int, events: bool) -> tuple[float, float]:
    """One drain by an embedded worker: tasks per wall-clock second, and per CPU second of this process."""
    options = {"key_prefix": prefix}
    app = App(
        "bench-events",
        broker=url,
        config={"broker_transport_options": options, "result_backend_transport_options": options},
    )
    runs = Countdown(n)

    @app.task(ignore_result=True)
    async def noop() -> None:
        runs.tick()

    await send_all(app, [noop.build_message() for _ in range(n)])
    worker = app.worker(concurrency=concurrency, send_events=events)
    async with worker:
        await asyncio.wait_for(runs.done.wait(), 600)
        elapsed = time.perf_counter() - runs.first
        cpu = time.process_time() - runs.first_cpu
    await app.aclose()
    return n / elapsed, n / cpu


async def events_sent(url: str, prefix: str) -> tuple[int, int]:
    """Events in the stream (each entry is a batch), and the bytes of their batches."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        batches = [fields[b"b"] for _, fields in await client.xrange(f"{prefix}:events")]
        return sum(len(decode_batch(batch)) for batch in batches), sum(map(len, batches))
    finally:
        await client.aclose()


class _Discard:
    """An event bus that drops every batch (the emitter alone is timed)."""

    url = "discard://"
    keeps_history = False

    async def connect(self) -> None:
        pass

    async def publish(self, batch: bytes) -> None:
        pass


async def emitter_alone(n: int) -> tuple[float, float]:
    """CPU microseconds per task of the hooks (received, started, succeeded) and of the flush."""
    emitter = EventEmitter(_Discard(), "bench:1", include_args=False, flush_interval=1.0)  # type: ignore[arg-type]
    ids = [str(uuid.uuid4()) for _ in range(n)]
    messages = [Message(id=task_id, task="bench.noop", root_id=task_id) for task_id in ids]
    hooks, flushes = [], []
    for _ in range(5):
        gc.collect()
        start = time.process_time()
        for message in messages:
            emitter.task_received(message)
        for message in messages:
            emitter.task_started(message)
        for message in messages:
            emitter.task_succeeded(message, 0.0001)
        middle = time.process_time()
        await emitter.flush()
        hooks.append(middle - start)
        flushes.append(time.process_time() - middle)
    return min(hooks) / n * 1e6, min(flushes) / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--loop", default="auto", help="auto (uvloop if installed), asyncio, uvloop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for round_number in range(args.rounds):
        for events in (False, True) if round_number % 2 == 0 else (True, False):
            prefix = f"asyncq-bench-events-{uuid.uuid4().hex[:8]}"
            gc.collect()
            try:
                rate, cpu_rate = await drain(args.url, prefix, args.tasks, args.concurrency, events)
                emitted, size = await events_sent(args.url, prefix)
            finally:
                await delete_prefix(args.url, prefix)
            wall[events].append(rate)
            cpu[events].append(cpu_rate)
            label = "on " if events else "off"
            print(
                f"round {round_number + 1} events {label}: {rate:9,.0f} tasks/s, "
                f"{cpu_rate:9,.0f} tasks/CPU-s ({emitted:,} events sent, {size / args.tasks:.0f} bytes/task)"
            )
    for name, rates in (("wall clock", wall), ("CPU time", cpu)):
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        verdict = "met" if on / off >= 0.90 else "NOT met"
        pairs = [b / a for a, b in zip(rates[False], rates[True], strict=True)]
        print(
            f"{name:10}: median drain off {off:,.0f}/s, on {on:,.0f}/s, "
            f"on/off {on / off:.3f} (target >= 0.90: {verdict}); per round: median "
            f"{statistics.median(pairs):.3f}, range {min(pairs):.3f}-{max(pairs):.3f}"
        )
    print(
        "(the CPU-time rate counts only this process's CPU: on a loaded machine it is the steadier "
        "figure; Redis's own share of the events, one XADD per flush, is not in it)"
    )
    # A batch of one flush interval's tasks at the drain's rate (what a busy worker's flush holds).
    hooks, flush = await emitter_alone(2_000)
    per_task = 1e6 / statistics.median(cpu[False])
    print(
        f"emitter alone: {hooks + flush:.2f} us per task (hooks {hooks:.2f}, batch {flush:.2f}) = "
        f"{(hooks + flush) / per_task:.1%} of an events-off drain's {per_task:.1f} CPU-us per task"
    )


if __name__ == "__main__":
    import sys

    from asyncq.runner import loop_factory

    loop = sys.argv[sys.argv.index("--loop") + 1] if "--loop" in sys.argv else "auto"
    factory = loop_factory(loop)
    print(f"event loop: {'uvloop' if factory else 'asyncio'}")
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
