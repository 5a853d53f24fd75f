"""The RabbitMQ round-trip floor beside asyncq's own round trip, in one invocation.

The floor is two bare hops on asyncq's lean AMQP client (``asyncq._amqp``) with asyncq's
topology: the producer publishes a persistent message (confirm mode, the confirm not awaited)
to queue A on one connection; a consumer process (its own connections, as a worker) takes it
from A (acked), publishes a transient reply to queue B on its publishing connection; the
producer consumes B (no-ack) on a second connection. No serialization, no task, no result
record: what is left is the server, the sockets and two event loops.

Beside it, asyncq's real round trip (``await (await echo.enqueue()).get()``) with rpc://
results and with Redis results (``peers.asyncq_amqp_app`` and ``peers.asyncq_amqp_redis_app``,
one worker process each, as ``compare_redis.py --broker rabbitmq`` runs them). The three run
in alternating chunks so that they see the same load; p50 / p99 over all round trips.
``--dramatiq`` adds dramatiq's round trip (RabbitMQ, Redis results) to the rotation.

Then (``--enqueues``, 0 to skip) confirmed sequential enqueues, no worker running: asyncq
rpc://, asyncq with Redis results and the bare aiormq ceiling (``peers/aiormq_ceiling.py``)
in alternating chunks of 100 -> enqueues/s over all chunks, and the median and range of the
chunks.

Usage: PYTHONPATH=<tree> python benchmarks/rabbitmq_floor.py [--round-trips 2000] [--chunk 100]
    [--enqueues 5000] [--dramatiq] [--amqp amqp://guest:guest@127.0.0.1:5672/] [--redis redis://127.0.0.1:6379]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop
from pamqp.commands import Basic, Queue

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _workers import WorkerProcess, cleanup_on_exit, log  # noqa: E402

from asyncq._amqp.protocol import LeanConnection, LeanMessage, LeanParams  # noqa: E402

QUEUE_A = "bench-floor.a"
QUEUE_B = "bench-floor.b"
WARM_UP = 50
FLOOR = "floor (two bare hops)"


def _ignore(error: BaseException) -> None:
    del error


def _reject(message: LeanMessage) -> None:
    message.channel.reject(message.delivery_tag, requeue=True)


async def hop(url: str) -> None:
    """The consumer side: A -> reply to B, then ack (the order a worker acks in)."""
    params = LeanParams(url, connection_name="bench-floor-hop")
    publisher = await LeanConnection.open(params, _reject, _ignore, timeout=10)
    await publisher.select_confirms(timeout=10)
    reply_properties = Basic.Properties(delivery_mode=1)

    def on_message(message: LeanMessage) -> None:
        publisher.publish("", QUEUE_B, message.body, reply_properties)
        message.channel.ack(message.delivery_tag)

    consumer = await LeanConnection.open(params, on_message, _ignore, timeout=10)
    await consumer.qos(1000, global_=False, timeout=10)
    await consumer.consume(QUEUE_A, "bench-floor-hop", timeout=10)
    print("ready", flush=True)
    await asyncio.Event().wait()


class Floor:
    """The producer side of the bare two hops."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.waiter: asyncio.Future[None] | None = None
        self.properties = Basic.Properties(delivery_mode=2, message_id="x")

    async def open(self) -> None:
        params = LeanParams(self.url, connection_name="bench-floor")
        self.publisher = await LeanConnection.open(params, _reject, _ignore, timeout=10)
        await self.publisher.select_confirms(timeout=10)
        self.replies = await LeanConnection.open(params, self._on_reply, _ignore, timeout=10)
        for queue in (QUEUE_A, QUEUE_B):
            await self.replies.rpc(Queue.Declare(queue=queue, durable=True), Queue.DeclareOk)
            await self.replies.rpc(Queue.Purge(queue=queue), Queue.PurgeOk)
        await self.replies.consume(QUEUE_B, "bench-floor", timeout=10, no_ack=True)

    def _on_reply(self, message: LeanMessage) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def round_trip(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        confirm = self.publisher.publish("", QUEUE_A, b"{}", self.properties)
        confirm.add_done_callback(_retrieve)  # in flight, not awaited (as rpc:// does)
        await self.waiter

    async def close(self) -> None:
        await self.replies.rpc(Queue.Delete(queue=QUEUE_A), Queue.DeleteOk)
        await self.replies.rpc(Queue.Delete(queue=QUEUE_B), Queue.DeleteOk)
        await self.publisher.close(timeout=5)
        await self.replies.close(timeout=5)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


async def probe(call: Callable[[], Awaitable[None]], worker: WorkerProcess) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            await asyncio.wait_for(call(), 15)
            return
        except Exception:
            worker.check_alive()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def main(args: argparse.Namespace) -> None:
    os.environ["BENCH_AMQP"] = args.amqp
    os.environ["BENCH_REDIS"] = args.redis
    from peers import asyncq_amqp_app, asyncq_amqp_redis_app

    log_dir = Path(tempfile.mkdtemp(prefix="asyncq-floor-"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env.update(BENCH_AMQP=args.amqp, BENCH_REDIS=args.redis, BENCH_TARGET="0", BENCH_SPAN_URL=args.redis)
    floor = Floor(args.amqp)
    await floor.open()
    hop_argv = [sys.executable, str(Path(__file__).resolve()), "--role", "hop", "--amqp", args.amqp]
    rows: dict[str, Callable[[], Awaitable[None]]] = {FLOOR: floor.round_trip}
    clients = []
    for name, module in (("asyncq rpc://", asyncq_amqp_app), ("asyncq Redis results", asyncq_amqp_redis_app)):
        await module.purge()
        client = module.Client()
        clients.append(client)
        rows[name] = client.round_trip
    workers = [
        WorkerProcess(hop_argv, env, log_dir / "hop.log"),
        WorkerProcess(asyncq_amqp_app.worker_command("rtt", 1000), env, log_dir / "rpc.log"),
        WorkerProcess(asyncq_amqp_redis_app.worker_command("rtt", 1000), env, log_dir / "redis.log"),
    ]
    if args.dramatiq:  # the closest peer, in the same rotation (its calls block the loop)
        from peers import dramatiq_amqp_app

        await dramatiq_amqp_app.purge()
        rows["dramatiq (Redis results)"] = dramatiq_amqp_app.Client().round_trip
        threads = getattr(dramatiq_amqp_app, "DRAIN_CONCURRENCY", 1000)
        command = dramatiq_amqp_app.worker_command("rtt", threads)
        workers.append(WorkerProcess(command, env, log_dir / "dramatiq.log"))
    times: dict[str, list[float]] = {name: [] for name in rows}
    try:
        for worker in workers:
            worker.__enter__()
        for client in clients:
            await client.open()
        for call, worker in zip(rows.values(), workers, strict=True):
            await probe(call, worker)
            for _ in range(WARM_UP):
                await call()
        for _ in range(max(1, args.round_trips // args.chunk)):
            for name, call in rows.items():
                spent = times[name]
                for _ in range(args.chunk):
                    started = time.perf_counter()
                    await call()
                    spent.append(time.perf_counter() - started)
    finally:
        for client in clients:
            await client.close()
        for worker in workers:
            worker.__exit__(None, None, None)
        await floor.close()
    base = percentile(times[FLOOR], 50)
    count = len(times[FLOOR])
    log(f"{'':24} {'p50 ms':>8} {'p99 ms':>8} {'p50 - floor':>12}   (n={count} each)")
    for name, spent in times.items():
        p50 = percentile(spent, 50)
        log(f"{name:24} {p50 * 1000:8.3f} {percentile(spent, 99) * 1000:8.3f} {(p50 - base) * 1000:12.3f}")
    if args.enqueues:
        await enqueues(args)


async def enqueues(args: argparse.Namespace) -> None:
    """Confirmed sequential enqueues of both asyncq rows beside the bare ceiling, interleaved."""
    from peers import aiormq_ceiling, asyncq_amqp_app, asyncq_amqp_redis_app

    modules = (asyncq_amqp_app, asyncq_amqp_redis_app)
    for module in modules:
        await module.purge()
    await aiormq_ceiling.purge()
    clients = [module.Client() for module in modules]
    bare = aiormq_ceiling.Client()
    calls: dict[str, Callable[[], Awaitable[None]]] = {}
    try:
        for name, client in zip(("asyncq rpc://", "asyncq Redis results"), clients, strict=True):
            await client.open()
            calls[name] = client.enqueue
        await bare.open()
        calls["bare aiormq ceiling"] = bare.enqueue
        rates: dict[str, list[float]] = {name: [] for name in calls}
        for call in calls.values():
            for _ in range(WARM_UP):
                await call()
        for _ in range(max(1, args.enqueues // 100)):
            for name, call in calls.items():
                started = time.perf_counter()
                for _ in range(100):
                    await call()
                rates[name].append(100 / (time.perf_counter() - started))
    finally:
        for client in clients:
            await client.close()
        await bare.close()
        for module in modules:
            await module.purge()
        await aiormq_ceiling.purge()
    log(f"{'confirmed enqueue':24} {'/s':>8} {'chunks: median':>15} {'range':>13}")
    for name, chunks in rates.items():
        overall = len(chunks) * 100 / sum(100 / rate for rate in chunks)
        spread = f"{min(chunks):,.0f}-{max(chunks):,.0f}"
        log(f"{name:24} {overall:8,.0f} {statistics.median(chunks):15,.0f} {spread:>13}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--round-trips", type=int, default=2000, help="per row")
    parser.add_argument("--chunk", type=int, default=100, help="round trips per row before the next row")
    parser.add_argument("--dramatiq", action="store_true", help="add dramatiq's round trip as a row")
    parser.add_argument("--enqueues", type=int, default=5000, help="per row; 0: no enqueue rows")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--role", default="main", choices=("main", "hop"), help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.role == "hop":
        uvloop.run(hop(arguments.amqp))
    else:
        with cleanup_on_exit(), asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main(arguments))
