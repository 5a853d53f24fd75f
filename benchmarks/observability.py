"""What metrics and tracing cost: enqueue and no-op drain rates on Redis with each off and on, in one run.

Modes, alternating in each round so the machine's load drifts over all alike:

- ``off``: neither (the baseline; producers stamp ``sent_at``, the default);
- ``bare``: neither, and no ``sent_at`` stamp (``task_send_sent_time=False``): what the stamp costs;
- ``metrics``: the worker serves Prometheus metrics (``metrics_port=0``), scraped once at the end;
- ``tracing``: OpenTelemetry with the SDK, a batch span processor and an exporter that drops
  the spans (what a process pays before its exporter's network I/O);
- ``both``: metrics and tracing.

Each round enqueues --tasks no-op tasks with ``send_many`` (timed: the enqueue rate, where the
publish spans are made), then starts an embedded worker and times from the first task's start
to the last one's end (the drain rate, where the process spans and metric updates are). The
medians and their ratios to ``off`` are printed.

Usage: python benchmarks/observability.py [--url redis://127.0.0.1:6379/0] [--tasks 20000]
       [--rounds 3] [--concurrency 500] [--modes off,bare,metrics,tracing,both]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
import timeit
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any

from _common import Countdown, delete_prefix, send_all
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from asyncq import App
from asyncq.message import Message
from asyncq.metrics import TaskMetrics
from asyncq.task import Request
from asyncq.tracing import instrument
from asyncq.worker.traced import consumer_for

MODES = ("off", "bare", "metrics", "tracing", "both")


class Discard(SpanExporter):
    """Counts the spans and drops them."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS


async def run(url: str, prefix: str, n: int, concurrency: int, mode: str) -> tuple[float, float, str]:
    """One round: tasks enqueued per second, drained per second, and what was observed."""
    options = {"key_prefix": prefix}
    config: dict[str, Any] = {
        "broker_transport_options": options,
        "result_backend_transport_options": options,
    }
    if mode == "bare":
        config["task_send_sent_time"] = False
    app = App("bench-observe", broker=url, config=config)
    provider = exporter = None
    if mode in ("tracing", "both"):
        exporter = Discard()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=2 * n + 100))
        instrument(app, tracer_provider=provider)
    runs = Countdown(n)

    @app.task(ignore_result=True)
    async def noop() -> None:
        runs.tick()

    messages = [noop.build_message() for _ in range(n)]
    await app.connect()
    started = time.perf_counter()
    await send_all(app, messages)
    enqueue_rate = n / (time.perf_counter() - started)
    metrics_port = 0 if mode in ("metrics", "both") else None
    seen = ""
    async with app.worker(concurrency=concurrency, metrics_port=metrics_port) as worker:
        await asyncio.wait_for(runs.done.wait(), 600)
        drain_rate = n / (time.perf_counter() - runs.first)
        if metrics_port is not None:
            body = await asyncio.to_thread(_scrape, worker.metrics_port)
            seen += f"{sum(1 for line in body.splitlines() if line.startswith('asyncq_'))} metric lines "
    await app.aclose()
    if provider is not None and exporter is not None:
        provider.force_flush()
        seen += f"{exporter.count:,} spans"
        provider.shutdown()
    return enqueue_rate, drain_rate, seen


def _scrape(port: int | None) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; known: {', '.join(MODES)}")
    logging.basicConfig(level=logging.WARNING)
    enqueue: dict[str, list[float]] = {m: [] for m in modes}
    drain: dict[str, list[float]] = {m: [] for m in modes}
    for round_number in range(args.rounds):
        for mode in modes:
            prefix = f"asyncq-bench-observe-{uuid.uuid4().hex[:8]}"
            try:
                sent, ran, seen = await run(args.url, prefix, args.tasks, args.concurrency, mode)
            finally:
                await delete_prefix(args.url, prefix)
            enqueue[mode].append(sent)
            drain[mode].append(ran)
            print(f"round {round_number + 1} {mode:8}: enqueue {sent:9,.0f}/s, drain {ran:9,.0f}/s  {seen}")
    base = "off" if "off" in modes else modes[0]
    for name, rates in (("enqueue", enqueue), ("drain", drain)):
        reference = statistics.median(rates[base])
        medians = {m: statistics.median(rates[m]) for m in modes}
        cells = ", ".join(f"{m} {rate:,.0f}/s ({rate / reference:.3f})" for m, rate in medians.items())
        print(f"{name:7} median (ratio to {base}): {cells}")
        extra = ", ".join(
            f"{m} {1e6 / rate - 1e6 / reference:+.1f}" for m, rate in medians.items() if m != base
        )
        print(f"{'':7} microseconds per task against {base}: {extra}")
    print(f"in-process cost per task, without I/O (min of 5 runs): {hook_costs()}")


def hook_costs() -> str:
    """Microseconds one task costs each observer's hooks, timed in this process: steadier than drains."""
    app = App("bench-hooks", broker="memory://", backend="memory://")
    metrics = TaskMetrics(CollectorRegistry())
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    instrument(app, tracer_provider=provider)
    traced = consumer_for(app)
    assert traced is not None
    assert app.publish_hook is not None
    book, _ = traced
    publish = app.publish_hook

    def per_task(fn: Any) -> float:
        return min(timeit.repeat(fn, number=2000, repeat=5)) / 2000 * 1e6

    def metered() -> None:
        message = Message(id="1", task="t", queue="q", headers={"sent_at": time.time()})
        metrics.task_received(message)
        metrics.task_started(message)
        metrics.task_succeeded(message, 0.001)

    def traced_task() -> None:
        message = Message(id="1", task="t", queue="q")
        publish(message)
        book.start("1", Request(id="1", task="t", args=[], kwargs={}, message=message))
        book.finish("1")

    def bare_span() -> None:
        provider.get_tracer("bench").start_span("x").end()

    cost = (
        f"metrics {per_task(metered):.1f} us, tracing {per_task(traced_task):.1f} us "
        f"(of which two bare SDK spans {2 * per_task(bare_span):.1f} us)"
    )
    provider.shutdown()
    return cost


if __name__ == "__main__":
    asyncio.run(main())
