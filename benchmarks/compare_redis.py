"""asyncq against its peers on the same local Redis (default) or RabbitMQ (``--broker rabbitmq``).

Redis: Celery, arq, taskiq (taskiq-redis) and SAQ, plus dramatiq's enqueue. RabbitMQ: asyncq
with rpc:// results and with Redis results, Celery (pyamqp, rpc:// results), dramatiq
(RabbitmqBroker, Redis results) and taskiq-aio-pika (Redis results), each on queues of its own
on that server, purged before every workload; the span timestamps stay in Redis.

Four workloads, the same for every framework, each framework's worker ONE process started by
this script (the modules in ``benchmarks/peers/`` hold each framework's tasks, worker command
and client):

1. drain: 20,000 no-op tasks queued with the worker stopped, then the worker is started
   -> tasks/s over the span from the first task's start to the last task's end, both
   timestamps taken inside the worker process (start-up and polling are not counted);
2. fan-out: 5,000 tasks each awaiting ``asyncio.sleep(0.5)`` (Celery: ``time.sleep`` on its
   threads pool) at concurrency 1,000, same method -> wall seconds (ideal 2.5 s: 5 waves);
3. round trip: 1,000 sequential enqueue -> await result calls against a warm worker
   (after a probe and 50 untimed calls) -> p50 / p99 ms;
4. enqueue: 5,000 sequential single-call enqueues, each awaited, no worker running (after 50
   untimed ones) -> enqueues/s. dramatiq is measured here too (enqueue only). On RabbitMQ:
   confirmed enqueues (each waits for the publisher confirm) and, where the framework has
   them, unconfirmed ones (dramatiq's and Celery's default; asyncq's ``confirm_publish=false``),
   in alternating chunks of 100; beside asyncq's rows also the bare ceiling, persistent
   confirmed publishes straight on aiormq (``peers/aiormq_ceiling.py``).

Each framework uses its own Redis database (FLUSHDB before every workload). ``--repeat``
runs everything that many times, frameworks interleaved, and reports medians. The table
gives asyncq's advantage over each peer: rates asyncq/peer, times peer/asyncq, so above 1 is
asyncq ahead. Peers come from ``benchmarks/requirements-peers.txt``; one that cannot be
imported is skipped with the reason. arq pins redis<6, so it runs from its own virtualenv:
``--python arq=/path/to/venv/bin/python`` runs that framework's part with that interpreter.

Usage: python benchmarks/compare_redis.py [--only asyncq,arq] [--repeat 3]
    [--python arq=~/venvs/arq/bin/python] [--tasks 20000] [--sleepers 5000]
    [--broker rabbitmq [--amqp amqp://guest:guest@127.0.0.1:5672/]]
Set PYTHONPATH to an asyncq tree to measure that tree; the workers inherit it.
``compare.py`` runs this script, per broker, beside the other comparisons.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _compare_table import CEILING, METRICS, Result, is_ours, median_of, print_table  # noqa: E402
from _workers import WorkerProcess, _live, cleanup_on_exit, log, stop_process  # noqa: E402
from peers._common import RABBITMQ_MODULES, SPAN_KEY, redis_url  # noqa: E402  (after the path set-up above)

#: framework -> module in peers/ (the order of the table), per --broker.
REDIS_FRAMEWORKS = {
    "asyncq": "peers.asyncq_app",
    "celery": "peers.celery_app",
    "arq": "peers.arq_app",
    "taskiq-stream": "peers.taskiq_app",
    "taskiq-list": "peers.taskiq_list_app",
    "saq": "peers.saq_app",
    "dramatiq": "peers.dramatiq_app",
}
RABBITMQ_FRAMEWORKS = {name: module for name, module in RABBITMQ_MODULES.items() if name != CEILING}
ALIASES = {
    "redis": {"taskiq": ["taskiq-stream", "taskiq-list"]},
    "rabbitmq": {"taskiq": ["taskiq-aio-pika"]},
}
WARM_UP = 50
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class Bench:
    """Runs the workloads of one framework (its module in peers/) in this process."""

    def __init__(self, name: str, module: types.ModuleType, args: argparse.Namespace) -> None:
        self.name = name
        self.module = module
        self.args = args
        self.url = redis_url(module.DB)
        self.notes: list[str] = []

    async def flush(self) -> None:
        client = redis.Redis.from_url(self.url)
        try:
            client.flushdb()
        finally:
            client.close()
        purge = getattr(self.module, "purge", None)
        if purge is not None:  # a framework whose queue is not in its Redis database
            await purge()

    @contextlib.asynccontextmanager
    async def client(self) -> Any:
        client = self.module.Client()
        await client.open()
        try:
            yield client
        finally:
            await client.close()

    def worker(self, workload: str, concurrency: int, target: int = 0) -> WorkerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        env.update(
            BENCH_REDIS=self.args.redis,
            BENCH_AMQP=self.args.amqp,
            BENCH_SPAN_URL=self.url,
            BENCH_TARGET=str(target),
            BENCH_CONCURRENCY=str(concurrency),
        )
        argv = self.module.worker_command(workload, concurrency)
        return WorkerProcess(argv, env, Path(self.args.log_dir) / f"{self.name}-{workload}.log")

    def scan_log(self, worker: WorkerProcess, workload: str) -> None:
        text = worker.text()
        too_many = text.count("Too many connections")
        if too_many:
            self.notes.append(f'{workload}: {too_many} "Too many connections" lines in the worker log')
        errors = [line for line in text.splitlines() if "Traceback" in line or " ERROR " in line]
        if errors:
            self.notes.append(
                f"{workload}: {len(errors)} error lines in the worker log, e.g. {errors[0][:120]}"
            )

    async def wait_span(self, worker: WorkerProcess) -> tuple[float, float, int]:
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + self.args.timeout
        try:
            while time.monotonic() < deadline:
                raw = client.get(SPAN_KEY)
                if raw is not None:
                    first, last, count = json.loads(raw)
                    return float(first), float(last), int(count)
                worker.check_alive()
                await asyncio.sleep(0.05)
        finally:
            client.close()
        raise TimeoutError(f"no span after {self.args.timeout:.0f}s\n{worker.tail()}")

    async def span(self, workload: str, task: str, n: int, concurrency: int) -> float:
        """Fill the queue with ``n`` tasks, start the worker, return first start -> last end."""
        await self.flush()
        async with self.client() as client:
            await client.fill(task, n)
        with self.worker(workload, concurrency, target=n) as worker:
            first, last, _ = await self.wait_span(worker)
        self.scan_log(worker, workload)
        return last - first

    @property
    def drain_concurrency(self) -> int:
        """--drain-concurrency if given, else the module's DRAIN_CONCURRENCY, else 1,000."""
        return int(self.args.drain_concurrency or getattr(self.module, "DRAIN_CONCURRENCY", 1000))

    async def drain(self) -> float:
        return self.args.tasks / await self.span("drain", "noop", self.args.tasks, self.drain_concurrency)

    async def fanout(self) -> float:
        return await self.span("fanout", "sleeper", self.args.sleepers, self.args.concurrency)

    async def round_trips(self) -> tuple[float, float]:
        await self.flush()
        async with self.client() as client:
            with self.worker("rtt", self.drain_concurrency) as worker:
                deadline = time.monotonic() + self.args.timeout
                while True:  # the probe: the worker is up once a round trip succeeds
                    try:
                        await asyncio.wait_for(client.round_trip(), 15)
                        break
                    except Exception as exc:
                        worker.check_alive()
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"no round trip within {self.args.timeout:.0f}s") from exc
                        await asyncio.sleep(0.2)
                for _ in range(WARM_UP):
                    await client.round_trip()
                times = []
                for _ in range(self.args.round_trips):
                    started = time.perf_counter()
                    await client.round_trip()
                    times.append(time.perf_counter() - started)
            self.scan_log(worker, "rtt")
        return percentile(times, 50) * 1000, percentile(times, 99) * 1000

    async def enqueue(self) -> dict[str, float]:
        """Sequential enqueues/s of each mode the client has, interleaved in chunks of 100.

        On RabbitMQ: ``enqueue`` (confirmed), ``enqueue_unconfirmed`` where the framework has
        that mode, and beside asyncq's rows the bare aiormq ceiling (``ceiling``), so all see
        the same server load.
        """
        await self.flush()
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(self.client())
            modes: dict[str, Callable[[], Any]] = {"enqueue": client.enqueue}
            if self.args.broker == "rabbitmq":
                if hasattr(client, "enqueue_unconfirmed"):
                    modes["enqueue_unconfirmed"] = client.enqueue_unconfirmed
                if is_ours(self.name):
                    from peers import aiormq_ceiling  # needs aiormq: RabbitMQ runs only

                    bare = aiormq_ceiling.Client()
                    await aiormq_ceiling.purge()
                    await bare.open()
                    stack.push_async_callback(aiormq_ceiling.purge)
                    stack.push_async_callback(bare.close)
                    modes["ceiling"] = bare.enqueue
            spent = dict.fromkeys(modes, 0.0)
            for call in modes.values():
                for _ in range(WARM_UP):
                    await call()
            chunks = max(1, self.args.enqueues // 100)
            for _ in range(chunks):
                for mode, call in modes.items():
                    started = time.perf_counter()
                    for _ in range(100):
                        await call()
                    spent[mode] += time.perf_counter() - started
        await self.flush()
        return {mode: chunks * 100 / seconds for mode, seconds in spent.items()}

    async def run(self) -> Result:
        result: Result = dict.fromkeys((*METRICS, "ceiling"))
        workloads: dict[str, Callable[[], Any]] = {
            "enqueue": self.enqueue,
            "drain": self.drain,
            "fanout": self.fanout,
            "rtt": self.round_trips,
        }
        for workload, measure in workloads.items():
            if workload not in self.module.WORKLOADS or workload not in self.args.workloads:
                continue
            try:
                value = await measure()
            except Exception as exc:
                log(f"  {self.name} {workload}: FAILED: {type(exc).__name__}: {exc}")
                first_line = next(iter(str(exc).splitlines()), "")
                self.notes.append(f"{workload} failed: {type(exc).__name__}: {first_line}")
                continue
            if workload == "rtt":
                result["p50"], result["p99"] = value
                log(f"  {self.name} round trip: p50 {value[0]:.2f} ms, p99 {value[1]:.2f} ms")
            elif workload == "enqueue":
                result.update(value)
                log(f"  {self.name} enqueue/s: " + ", ".join(f"{m} {v:,.0f}" for m, v in value.items()))
            else:
                result[workload] = value
                unit = {"drain": "tasks/s", "fanout": "s"}[workload]
                log(f"  {self.name} {workload}: {value:,.2f} {unit}")
        try:
            await self.flush()
        except Exception as exc:  # a failed clean-up must not end the whole invocation
            self.notes.append(f"final purge failed: {type(exc).__name__}: {exc}")
        return result


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


async def run_in_process(name: str, args: argparse.Namespace) -> tuple[Result | None, list[str]]:
    try:
        module = importlib.import_module(frameworks(args.broker)[name])
    except ImportError as exc:
        if name == "arq":
            hint = "arq needs a virtualenv of its own: benchmarks/requirements-arq.txt, then --python arq=..."
        else:
            hint = "pip install -r benchmarks/requirements-peers.txt"
        reason = f"not importable with {sys.executable} ({exc}); {hint}"
        return None, [f"skipped: {reason}"]
    bench = Bench(name, module, args)
    return await bench.run(), bench.notes


def passthrough(args: argparse.Namespace) -> list[str]:
    return [
        *("--broker", args.broker, "--amqp", args.amqp),
        *("--redis", args.redis, "--tasks", str(args.tasks), "--sleepers", str(args.sleepers)),
        *("--concurrency", str(args.concurrency), "--drain-concurrency", str(args.drain_concurrency)),
        *("--round-trips", str(args.round_trips), "--enqueues", str(args.enqueues)),
        *("--timeout", str(args.timeout), "--loop", args.loop, "--workloads", ",".join(args.workloads)),
    ]


async def run_with_interpreter(
    name: str, python: str, args: argparse.Namespace
) -> tuple[Result | None, list[str]]:
    """Run one framework's part of the benchmark with another interpreter (its own venv)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        argv = [
            python,
            str(Path(__file__).resolve()),
            "--only",
            name,
            "--json-out",
            str(out),
            *passthrough(args),
        ]
        proc = subprocess.Popen(argv, start_new_session=True)
        _live.add(proc)
        try:
            deadline = time.monotonic() + 4 * args.timeout + 120
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        finally:
            stop_process(proc, grace=20)  # its SIGTERM handler stops its own worker first
        if not out.exists():
            return None, [f"skipped: its run with {python} produced no result (status {proc.returncode})"]
        data = json.loads(out.read_text())
        return data["result"], data["notes"]


def frameworks(broker: str) -> dict[str, str]:
    return RABBITMQ_FRAMEWORKS if broker == "rabbitmq" else REDIS_FRAMEWORKS


def select(only: str | None, broker: str) -> list[str]:
    known = frameworks(broker)
    if not only:
        return list(known)
    chosen: list[str] = []
    for item in (part.strip() for part in only.split(",")):
        names = ALIASES[broker].get(item, [item])
        for name in names:
            if name not in known:
                raise SystemExit(f"unknown framework {item!r}; choose from {', '.join(known)}, taskiq")
            if name not in chosen:
                chosen.append(name)
    return [name for name in known if name in chosen]


async def main(args: argparse.Namespace) -> None:
    names = select(args.only, args.broker)
    pythons = dict(item.split("=", 1) for item in args.python)
    runs: dict[str, list[Result]] = {name: [] for name in names}
    notes: dict[str, list[str]] = {name: [] for name in names}
    skipped: set[str] = set()
    for repeat in range(args.repeat):
        for name in names:
            if name in skipped:
                continue
            if not args.json_out:  # a child run's parent printed this line already
                log(f"[run {repeat + 1}/{args.repeat}] {name}")
            python = pythons.get(name)
            if python and os.path.abspath(os.path.expanduser(python)) != os.path.abspath(sys.executable):
                result, extra = await run_with_interpreter(name, os.path.expanduser(python), args)
            else:
                result, extra = await run_in_process(name, args)
            notes[name].extend(note for note in extra if note not in notes[name])
            if result is None:
                skipped.add(name)
                log(f"  {name} {extra[0] if extra else 'skipped'}")
                continue
            runs[name].append(result)
    results = {name: median_of(runs[name]) for name in names if runs[name]}
    ceilings = [c for name in results if (c := results[name].get("ceiling")) is not None]
    if ceilings and not args.json_out:  # measured beside each asyncq row's enqueues
        results[CEILING] = {**dict.fromkeys(METRICS), "enqueue": statistics.median(ceilings)}
    if not args.json_out:
        log(f"worker logs: {args.log_dir}")
    if args.json_out:
        name = names[0]
        payload = {"result": results.get(name), "notes": notes[name]}
        Path(args.json_out).write_text(json.dumps(payload))
        return
    print_table(results, args)
    flat = [(name, note) for name in names for note in notes[name]]
    if flat:
        log("")
        log("notes:")
        for name, note in flat:
            log(f"  {name}: {note}")


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise SystemExit("uvloop is not installed") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--broker",
        default="redis",
        choices=("redis", "rabbitmq"),
        help="where every framework queues its tasks (spans and Redis results stay in --redis)",
    )
    parser.add_argument(
        "--only",
        help="comma-separated; redis: "
        + ", ".join(REDIS_FRAMEWORKS)
        + " (taskiq = both); rabbitmq: "
        + ", ".join(RABBITMQ_FRAMEWORKS),
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of everything; medians are reported")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="loopback Redis, without a db")
    parser.add_argument(
        "--amqp", default="amqp://guest:guest@127.0.0.1:5672/", help="loopback RabbitMQ of --broker rabbitmq"
    )
    parser.add_argument("--tasks", type=int, default=20_000, help="no-op tasks of the drain")
    parser.add_argument("--sleepers", type=int, default=5_000, help="tasks of the fan-out")
    parser.add_argument("--concurrency", type=int, default=1_000, help="worker concurrency of the fan-out")
    parser.add_argument(
        "--drain-concurrency",
        type=int,
        default=0,
        help="worker concurrency of the drain and round trips (default: the peer module's "
        "DRAIN_CONCURRENCY, else 1,000)",
    )
    parser.add_argument(
        "--workloads",
        default="enqueue,drain,fanout,rtt",
        help="comma-separated subset of enqueue,drain,fanout,rtt",
    )
    parser.add_argument("--round-trips", type=int, default=1_000)
    parser.add_argument("--enqueues", type=int, default=5_000)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds any one wait may take")
    parser.add_argument(
        "--loop", default="uvloop", choices=("uvloop", "asyncio", "auto"), help="this process's loop"
    )
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="FRAMEWORK=PATH",
        help="run FRAMEWORK's part with another interpreter (e.g. arq=~/venvs/arq/bin/python)",
    )
    parser.add_argument(
        "--asyncq-broker",
        help="run asyncq's workloads on this loopback broker instead (e.g. amqp://guest:guest@127.0.0.1//); "
        "timings are still kept in Redis",
    )
    parser.add_argument("--json-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.log_dir = tempfile.mkdtemp(prefix="asyncq-compare-")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(args.workloads) - {"enqueue", "drain", "fanout", "rtt"}
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    host = urlsplit(args.redis).hostname or ""
    if host not in LOOPBACK:
        parser.error(f"--redis must be a loopback address (127.0.0.1, localhost, ::1), not {host!r}")
    os.environ["BENCH_REDIS"] = args.redis  # read by peers._common.redis_url, here and in workers
    amqp_host = urlsplit(args.amqp).hostname or ""
    if amqp_host not in LOOPBACK:
        parser.error(f"--amqp must be a loopback address, not {amqp_host!r}")
    os.environ["BENCH_AMQP"] = args.amqp  # read by peers._common.amqp_url
    if args.asyncq_broker:
        broker_host = urlsplit(args.asyncq_broker).hostname or ""
        if broker_host not in LOOPBACK:
            parser.error(f"--asyncq-broker must be a loopback address, not {broker_host!r}")
        os.environ["BENCH_ASYNCQ_BROKER"] = args.asyncq_broker  # read by peers.asyncq_app
    return args


if __name__ == "__main__":
    arguments = parse_args()
    try:
        with cleanup_on_exit(), asyncio.Runner(loop_factory=loop_factory(arguments.loop)) as runner:
            runner.run(main(arguments))
    except KeyboardInterrupt:
        print("interrupted; worker processes stopped", file=sys.stderr)
        sys.exit(130)
