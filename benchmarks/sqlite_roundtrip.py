"""Cross-process round trip, enqueue and drain rates of the embedded sqlite:// store, beside SqliteHuey.

Run with ``python benchmarks/sqlite_roundtrip.py [--trees after=.,before=/path/to/main]
[--round-trips 500] [--enqueues 2000] [--backlog 20000] [--rounds 3]
[--huey-python ~/venvs/huey/bin/python]``.

For each asyncq source tree a client process first does ``--enqueues`` sequential
``noop.enqueue()`` calls with no worker (calls/s); then a worker (``asyncq run``, default
settings) starts and drains that backlog (tasks/s, timed from the first message gone to the last,
by counting the queue's rows from this process); then a client does ``--round-trips`` sequential
``echo.enqueue()`` + ``result.get()`` calls (p50 / p99 in ms). Last, it queues ``--backlog``
messages, waits until the worker takes from them, and does ``--enqueues`` sequential
``noop.enqueue()`` calls while the worker drains that backlog: calls/s, and the tasks/s the
worker drained in the same window (it must not run out of backlog, or the run fails: a worker
that ran dry may have slept). With huey installed in the given interpreter, the same is
measured for SqliteHuey (a thread consumer, default settings).
Rounds interleave the contenders (the order rotates each round); the summary shows each
column's median and its range over the rounds. Raw drain and publish rates are in
``benchmarks/sqlite_broker.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Imported, not run as __main__: huey names tasks by module, as the consumer registered them.
HUEY_CLIENT = (
    "import json, sys; from peers.huey_sqlite import client;"
    " print(json.dumps(client(*map(int, sys.argv[1:]))))"
)

if os.environ.get("BENCH_SQLITE_URL"):  # imported by the worker or run as the client
    from asyncq import App

    app = App("bench", broker=os.environ["BENCH_SQLITE_URL"])

    @app.task
    async def echo() -> int:
        return 1

    @app.task
    async def noop() -> None:
        return None


async def enqueue_rate(count: int) -> float:
    """Sequential ``noop.enqueue()`` calls, each awaited, after 50 untimed ones: calls/s."""
    for _ in range(50):
        await noop.enqueue()
    started = time.perf_counter()
    for _ in range(count):
        await noop.enqueue()
    return count / (time.perf_counter() - started)


def rows_left(path: str, table: str) -> int:
    """Rows in ``table`` of the file at ``path`` (waiting or claimed, not yet done)."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        n: int = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        return n
    finally:
        conn.close()


def wait_draining(path: str, table: str, backlog: int, timeout: float = 60) -> None:
    """Return once the worker took something of the backlog: it is awake and consuming."""
    deadline = time.monotonic() + timeout
    while rows_left(path, table) >= backlog:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker took nothing of {backlog} messages in {timeout:g}s")
        time.sleep(0.001)


def beside_drain(
    path: str, table: str, left_before: int, left_after: int, count: int, seconds: float
) -> dict[str, float]:
    """The rates of the window in which ``count`` enqueues took ``seconds`` beside a draining worker."""
    if not left_after:  # the worker ran dry, and may have slept: the window was not all busy
        raise RuntimeError(f"the backlog in {table} ran out: use a larger --backlog")
    return {
        "enqueue_busy": count / seconds,
        "drained_busy": (left_before + count - left_after) / seconds,
    }


async def enqueue_beside_drain(count: int, backlog: int) -> dict[str, float]:
    """``count`` sequential enqueues while the worker drains a backlog it does not run out of."""
    path = os.environ["BENCH_SQLITE_URL"].removeprefix("sqlite:///")
    for start in range(0, backlog, 500):  # concurrent sends share commits: a quick fill
        await asyncio.gather(*(noop.enqueue() for _ in range(min(500, backlog - start))))
    wait_draining(path, "asyncq_messages", backlog)
    before = rows_left(path, "asyncq_messages")
    started = time.perf_counter()
    for _ in range(count):
        await noop.enqueue()
    seconds = time.perf_counter() - started
    return beside_drain(path, "asyncq_messages", before, rows_left(path, "asyncq_messages"), count, seconds)


async def client(round_trips: int, enqueues: int, backlog: int) -> dict[str, float]:
    """Measure in this process against a running worker (with ``round_trips`` 0: none); return the numbers."""
    await app.connect()
    try:
        if not round_trips:
            return {"enqueue_idle": await enqueue_rate(enqueues)}
        deadline = time.monotonic() + 60
        while True:  # warm up: the worker is ready once a round trip succeeds
            try:
                await (await echo.enqueue()).get(timeout=5)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
        samples = []
        for _ in range(round_trips):
            started = time.perf_counter()
            await (await echo.enqueue()).get(timeout=10)
            samples.append((time.perf_counter() - started) * 1000)
        samples.sort()
        return {
            "p50": statistics.median(samples),
            "p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
            **await enqueue_beside_drain(enqueues, backlog),
        }
    finally:
        await app.aclose()


def run_asyncq(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        env = {
            **os.environ,
            "BENCH_SQLITE_URL": f"sqlite:///{db}",
            "PYTHONPATH": os.pathsep.join([str(tree), str(HERE)]),
        }
        client = [sys.executable, str(Path(__file__)), "--client"]
        idle = _json(
            subprocess.run([*client, "0", str(args.enqueues), "0"], env=env, cwd=HERE, **_RUN).stdout
        )
        worker = subprocess.Popen(
            [sys.executable, "-m", "asyncq", "run", "sqlite_roundtrip:app", "--log-level", "error"],
            env=env,
            cwd=HERE,
        )
        try:
            drain = drain_rate(db, "asyncq_messages", worker)
            cmd = [*client, str(args.round_trips), str(args.enqueues), str(args.backlog)]
            busy = _json(subprocess.run(cmd, env=env, cwd=HERE, **_RUN).stdout)
        finally:
            worker.terminate()
            worker.wait(30)
        return {**idle, "drain": drain, **busy}


def drain_rate(db: Path, table: str, worker: subprocess.Popen[bytes], timeout: float = 120) -> float:
    """Tasks/s of a worker draining the backlog in ``table``: from its first row gone to its last."""
    conn = sqlite3.connect(db, timeout=30)
    try:

        def count() -> int:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{table} not drained in {timeout:g}s")
            n: int = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            return n

        deadline = time.monotonic() + timeout
        backlog = count()
        while (left := count()) == backlog:
            time.sleep(0.001)
        started = time.perf_counter()
        while count():
            time.sleep(0.001)
        return left / (time.perf_counter() - started)
    finally:
        conn.close()


_RUN: dict[str, Any] = {"capture_output": True, "text": True, "timeout": 600, "check": True}


def _json(out: str) -> dict[str, float]:
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def run_huey(python: str, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "huey.db"
        env = {**os.environ, "BENCH_HUEY_DB": str(db), "PYTHONPATH": str(HERE)}
        client = [python, "-c", HUEY_CLIENT]
        idle = _json(
            subprocess.run([*client, "0", str(args.enqueues), "0"], env=env, cwd=HERE, **_RUN).stdout
        )
        consumer_bin = str(Path(python).parent / "huey_consumer")
        worker = subprocess.Popen(
            [consumer_bin, "peers.huey_sqlite.huey", "-w", "4", "-k", "thread", "-q"], env=env, cwd=HERE
        )
        try:
            drain = drain_rate(db, "task", worker)
            cmd = [*client, str(args.round_trips), str(args.enqueues), str(args.backlog)]
            busy = _json(subprocess.run(cmd, env=env, cwd=HERE, **_RUN).stdout)
        finally:
            worker.terminate()
            worker.wait(30)
        return {**idle, "drain": drain, **busy}


_COLUMNS = (
    ("rtt p50 ms", "p50", "{:.2f}"),
    ("rtt p99 ms", "p99", "{:.2f}"),
    ("enqueue/s", "enqueue_idle", "{:,.0f}"),
    ("drain/s", "drain", "{:,.0f}"),
    ("enqueue/s, draining", "enqueue_busy", "{:,.0f}"),
    ("drained/s meanwhile", "drained_busy", "{:,.0f}"),
)


def _row(name: str, cells: list[str]) -> str:
    return f"{name:<18}" + "".join(f"{c:>24}" for c in cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trees", default="after=.", help="name=path of asyncq source trees, comma-separated"
    )
    parser.add_argument("--round-trips", type=int, default=500)
    parser.add_argument("--enqueues", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds, contenders interleaved")
    parser.add_argument("--huey-python", default=str(Path.home() / "venvs/huey/bin/python"))
    parser.add_argument("--json-out", help="also write each contender's medians to this file as JSON")
    parser.add_argument(
        "--backlog", type=int, default=20000, help="messages the worker drains while the timed enqueues run"
    )
    parser.add_argument("--client", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        # Through the module, so that the tasks have the names the worker registered.
        import sqlite_roundtrip

        print(json.dumps(asyncio.run(sqlite_roundtrip.client(*args.client))))
        return
    contenders: list[tuple[str, Any]] = []
    for spec in args.trees.split(","):
        name, _, path = spec.partition("=")
        contenders.append((f"asyncq {name}", partial(run_asyncq, Path(path).resolve(), args)))
    if Path(args.huey_python).exists():
        contenders.append(("huey SqliteHuey", partial(run_huey, args.huey_python, args)))
    else:
        print(f"(huey skipped: no {args.huey_python})")
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in contenders}
    print(_row("", [head for head, _, _ in _COLUMNS]))
    for round_ in range(args.rounds):
        shift = round_ % len(contenders)
        for name, run in contenders[shift:] + contenders[:shift]:
            r = run()
            results[name].append(r)
            print(_row(f"{round_ + 1}: {name}", [fmt.format(r[key]) for _, key, fmt in _COLUMNS]), flush=True)
    print(f"median of {args.rounds} rounds (min-max):")
    for name, rs in results.items():
        cells = []
        for _, key, fmt in _COLUMNS:
            values = [r[key] for r in rs]
            spread = f" ({fmt.format(min(values))}-{fmt.format(max(values))})" if len(values) > 1 else ""
            cells.append(fmt.format(statistics.median(values)) + spread)
        print(_row(name, cells))
    if args.json_out:
        medians = {
            name: {key: statistics.median(r[key] for r in rs) for _, key, _ in _COLUMNS}
            for name, rs in results.items()
        }
        params = {
            "rounds": args.rounds,
            "round_trips": args.round_trips,
            "enqueues": args.enqueues,
            "backlog": args.backlog,
        }
        Path(args.json_out).write_text(json.dumps({"medians": medians, "params": params}, indent=1))


if __name__ == "__main__":
    main()
