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

Then (``--enqueue-rounds``, 0 to skip) rounds of confirmed sequential enqueues, no worker
running: in each round, every row (``--rows``: asyncq, the bare aiormq ceiling of
``peers/aiormq_ceiling.py``, dramatiq with ``confirm_delivery``, Celery with
``confirm_publish``, taskiq-aio-pika; the clients of ``compare_redis.py --broker rabbitmq``)
runs ``--enqueues`` enqueues, each awaiting its publisher confirm, in a fresh process of its
own, the rows back to back -> enqueues/s per row and round, each row's median and range, and
the per-round ratios of the first row to every other one (the server's swings from minute to
minute cancel out of those). Run it with the peers' interpreter (``~/venvs/peers/bin/python``,
``benchmarks/requirements-peers.txt``): the rows' processes use the same one.
``--round-trips 0`` skips the round trips.

Usage: PYTHONPATH=<tree> python benchmarks/rabbitmq_floor.py [--round-trips 2000] [--chunk 100]
    [--dramatiq] [--enqueue-rounds 5] [--enqueues 1000] [--rows asyncq,aiormq-bare,dramatiq,...]
    [--json-out FILE] [--amqp amqp://guest:guest@127.0.0.1:5672/] [--redis redis://127.0.0.1:6379]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import math
import os
import select
import statistics
import subprocess
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

from _workers import WorkerProcess, _live, cleanup_on_exit, log, stop_process  # noqa: E402
from peers._common import RABBITMQ_MODULES  # noqa: E402

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
    log_dir = Path(tempfile.mkdtemp(prefix="asyncq-floor-"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env.update(BENCH_AMQP=args.amqp, BENCH_REDIS=args.redis, BENCH_TARGET="0", BENCH_SPAN_URL=args.redis)
    if args.round_trips:
        await round_trips(args, env, log_dir)
    if args.enqueue_rounds and args.enqueues:  # --enqueues 0 skips them too, as it used to
        rates = enqueue_rounds(args, env, log_dir)
        if args.json_out:
            medians = {row: statistics.median(values) for row, values in rates.items()}
            Path(args.json_out).write_text(json.dumps({"enqueue_rounds": rates, "medians": medians}))
    log(f"logs: {log_dir}")


async def round_trips(args: argparse.Namespace, env: dict[str, str], log_dir: Path) -> None:
    """The floor, asyncq's two rows (and dramatiq's) in alternating chunks; p50 / p99."""
    from peers import asyncq_amqp_app, asyncq_amqp_redis_app

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


class EnqueueChild:
    """One row of an enqueue round: a fresh process that connects and warms up, then times
    each chunk of sequential confirmed enqueues the driver asks for (see ``enqueue_child``)."""

    def __init__(self, name: str, args: argparse.Namespace, env: dict[str, str], log_path: Path) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--role", "enqueue", "--row", name]
        self.name, self.timeout = name, args.timeout
        self.log_path = log_path
        self.seconds = self.cpu = 0.0
        with log_path.open("ab") as log_file:  # the child's stderr (and any stray stdout)
            self.proc = subprocess.Popen(
                argv,
                cwd=HERE,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                bufsize=0,
                start_new_session=True,
            )
        _live.add(self.proc)

    def line(self) -> str:
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        text = self.proc.stdout.readline().decode() if readable else ""
        if not text:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-10:])
            raise RuntimeError(f"{self.name}: no answer from its process\n{tail}")
        return text.strip()

    def chunk(self, count: int) -> None:
        """Time ``count`` enqueues in the child; adds its wall and CPU seconds to the totals."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"%d\n" % count)
        seconds, cpu = json.loads(self.line())
        self.seconds += seconds
        self.cpu += cpu

    def finish(self) -> None:
        """Let the child purge its queue and close, and wait for it."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(self.timeout)
        _live.discard(self.proc)


async def enqueue_child(name: str) -> None:
    """The child side: purge, connect, warm up, "ready"; then per line N, time N enqueues."""
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # a library's prints go to the log, not into the protocol
    module = importlib.import_module(RABBITMQ_MODULES[name])
    await module.purge()
    client = module.Client()
    await client.open()
    loop = asyncio.get_running_loop()
    try:
        for _ in range(WARM_UP):
            await client.enqueue()
        print("ready", file=protocol, flush=True)
        # Read off the loop: an async client's connection stays served while it waits.
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            count = int(line)
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(count):
                await client.enqueue()
            spent = [time.perf_counter() - started, time.process_time() - cpu]
            print(json.dumps(spent), file=protocol, flush=True)
    finally:
        await client.close()
        await module.purge()


def enqueue_rounds(args: argparse.Namespace, env: dict[str, str], log_dir: Path) -> dict[str, list[float]]:
    """Rounds of confirmed sequential enqueues, one fresh process per row and round.

    Every row's process of a round connects and warms up first; then the rows take turns,
    ``--chunk`` enqueues each, until each did ``--enqueues``: every row sees the same
    seconds of the server. The order of the turns rotates by one row per chunk and round,
    so that no row always goes first.
    """
    rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    for row in rows:
        if row not in RABBITMQ_MODULES:
            raise SystemExit(f"unknown row {row!r}; choose from {', '.join(RABBITMQ_MODULES)}")
    rates: dict[str, list[float]] = {row: [] for row in rows}
    cpu: dict[str, list[float]] = {row: [] for row in rows}
    chunks = max(1, args.enqueues // args.chunk)
    log(
        f"confirmed enqueue rounds: {args.enqueue_rounds} x {chunks * args.chunk} per row, "
        f"in turns of {args.chunk}; enqueues/s"
    )
    log("round " + "".join(f"{row:>22}" for row in rows))
    for index in range(args.enqueue_rounds):
        children = [EnqueueChild(row, args, env, log_dir / f"enqueue-{row}.log") for row in rows]
        try:
            for child in children:
                if child.line() != "ready":
                    raise RuntimeError(f"{child.name}: unexpected answer")
            for turn in range(chunks):
                shift = (index + turn) % len(children)
                for child in children[shift:] + children[:shift]:
                    child.chunk(args.chunk)
            for child in children:
                child.finish()
        finally:
            for child in children:
                stop_process(child.proc, grace=5)
        for child in children:
            rates[child.name].append(chunks * args.chunk / child.seconds)
            cpu[child.name].append(child.cpu / (chunks * args.chunk) * 1e6)
        log(f"{index + 1:5} " + "".join(f"{rates[row][-1]:22,.0f}" for row in rows))
    summarize(rates, cpu, rows[0])
    return rates


def summarize(rates: dict[str, list[float]], cpu: dict[str, list[float]], ours: str) -> None:
    """Each row's median and range, ``ours`` over it per round, and the client's CPU per call."""
    title = f"{ours} / row per round"
    log(f"{'row':22} {'median /s':>10} {'range':>13} {title:>30} {'client CPU us/call':>20}")
    for row, values in rates.items():
        ratios = [a / b for a, b in zip(rates[ours], values, strict=True)]
        spread = f"{min(values):,.0f}-{max(values):,.0f}"
        middle = statistics.median(ratios)
        ratio = "" if row == ours else f"{middle:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        used = statistics.median(cpu[row])
        log(f"{row:22} {statistics.median(values):10,.0f} {spread:>13} {ratio:>30} {used:20.0f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--round-trips", type=int, default=2000, help="per row; 0: no round trips")
    parser.add_argument("--chunk", type=int, default=100, help="round trips / enqueues per row and turn")
    parser.add_argument("--dramatiq", action="store_true", help="add dramatiq's round trip as a row")
    parser.add_argument("--enqueue-rounds", type=int, default=5, help="0: no enqueue rounds")
    parser.add_argument("--enqueues", type=int, default=1000, help="per row and round; 0: none")
    parser.add_argument("--rows", default="asyncq,aiormq-bare,dramatiq,celery,taskiq-aio-pika")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a row's process may take")
    parser.add_argument("--json-out", help="also write the enqueue rates per row and round here")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--role", default="main", choices=("main", "hop", "enqueue"), help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    os.environ["BENCH_AMQP"] = arguments.amqp  # read by peers._common, here and in the children
    os.environ["BENCH_REDIS"] = arguments.redis
    if arguments.role == "enqueue":
        uvloop.run(enqueue_child(arguments.row))
    elif arguments.role == "hop":
        uvloop.run(hop(arguments.amqp))
    else:
        with cleanup_on_exit(), asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main(arguments))
