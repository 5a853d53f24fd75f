"""One comparison of asyncq against its peers: every broker's script, then one summary table.

Runs, as subprocesses with ``--json-out``, the per-broker comparisons and prints broker x
workload -> asyncq's figure, the best peer and its figure, and the ratio (rates asyncq/peer,
times peer/asyncq: above 1 is asyncq ahead):

* ``redis``: ``compare_redis.py``, once per framework (``--only NAME``), the frameworks
  interleaved in every repeat (medians here); arq with its own interpreter (``--python arq=``);
* ``rabbitmq``: the same with ``compare_redis.py --broker rabbitmq``, except the confirmed
  enqueue: that row comes from ``rabbitmq_floor.py``'s rounds (every framework and the bare
  ceiling in turns of 100 enqueues, ``max(3, --repeat)`` rounds, ``--enqueues`` per round),
  which see the same server load. Where compare_redis.py has no ``--broker`` option, only
  asyncq is measured there (``--asyncq-broker amqp://...``) and the table says that no peer was;
* ``sqlite``: ``sqlite_roundtrip.py``, asyncq beside huey's SqliteHuey;
* ``postgres``: ``compare_postgres.py`` (procrastinate, SAQ) with the interpreter of its own
  virtualenv (``--python pg=``);
* ``--cpu``: ``compare_cpu.py``, the CPU-bound and mixed workloads on Redis.

Peers come from the benchmark requirements files (``requirements-peers.txt``,
``requirements-postgres.txt``, ``requirements-arq.txt``), never from asyncq's dependencies;
each group runs with its own interpreter: ``--python peers=...`` (Redis peers, huey, the CPU
comparison), ``pg=...``, ``arq=...`` (default ``~/venvs/<group>/bin/python`` where it exists,
else this interpreter for ``peers``; ``pg`` and ``arq`` are then skipped). Sizes given here
are passed to the scripts that take them; the others keep their defaults.

Usage: python benchmarks/compare.py [--brokers redis,rabbitmq,sqlite,postgres] [--cpu]
    [--repeat 1] [--python peers=~/venvs/peers/bin/python] [--python pg=~/venvs/pg/bin/python]
    [--tasks N] [--round-trips N] [--enqueues N] [--sleepers N] [--cpu-tasks N] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BROKERS = ("redis", "rabbitmq", "sqlite", "postgres")
#: compare_redis.py's frameworks, in its order; arq runs with its own interpreter.
REDIS_FRAMEWORKS = ("asyncq", "celery", "arq", "taskiq-stream", "taskiq-list", "saq", "dramatiq")
#: ... and with --broker rabbitmq (asyncq's Redis-results row is asyncq too: not a peer).
RABBITMQ_FRAMEWORKS = ("asyncq", "asyncq+redis-results", "celery", "dramatiq", "taskiq-aio-pika")
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"

#: metric -> (label, unit, higher is better)
REDIS_METRICS = {
    "drain": ("drain", "tasks/s", True),
    "fanout": ("fan-out (sleep 0.5)", "s", False),
    "p50": ("round trip p50", "ms", False),
    "p99": ("round trip p99", "ms", False),
    "enqueue": ("enqueue", "/s", True),
}
SQLITE_METRICS = {
    "drain": ("drain", "tasks/s", True),
    "p50": ("round trip p50", "ms", False),
    "p99": ("round trip p99", "ms", False),
    "enqueue_idle": ("enqueue", "/s", True),
    "enqueue_busy": ("enqueue, worker draining", "/s", True),
    "drained_busy": ("drained meanwhile", "tasks/s", True),
}
RABBITMQ_METRICS = {
    **REDIS_METRICS,
    "enqueue": ("enqueue, confirmed", "/s", True),
    "enqueue_unconfirmed": ("enqueue, unconfirmed", "/s", True),
}
POSTGRES_METRICS = {key: REDIS_METRICS[key] for key in ("drain", "p50", "p99", "enqueue")}
CPU_METRICS = {"cpu": ("cpu tasks", "s", False), "mixed": ("mixed cpu + io", "s", False)}


class Row:
    """One line of the summary: asyncq's figure and every peer's, for one broker and workload."""

    def __init__(self, broker: str, metric: tuple[str, str, bool]) -> None:
        self.broker = broker
        self.label, self.unit, self.higher = metric
        self.asyncq: float | None = None
        self.peers: dict[str, float] = {}
        self.note = ""

    def best(self) -> tuple[str, float] | None:
        if not self.peers:
            return None
        pick = max if self.higher else min
        name = pick(self.peers, key=self.peers.__getitem__)
        return name, self.peers[name]

    def ratio(self) -> float | None:
        best = self.best()
        if best is None or not self.asyncq or not best[1]:
            return None
        return self.asyncq / best[1] if self.higher else best[1] / self.asyncq


def log(message: str) -> None:
    print(message, flush=True)


def interpreter(args: argparse.Namespace, group: str) -> str | None:
    given = args.pythons.get(group)
    candidates = [given] if given else [f"~/venvs/{group}/bin/python"]
    for candidate in candidates:
        path = Path(candidate).expanduser()
        if path.exists():
            return str(path)
        if given:
            raise SystemExit(f"--python {group}={given}: no such file")
    return sys.executable if group == "peers" else None


def run_script(args: argparse.Namespace, python: str, script: str, extra: list[str]) -> dict[str, Any] | None:
    """Run one benchmark script with ``--json-out``; its output goes to the console and a log."""
    out = Path(args.work_dir) / f"{script}-{time.monotonic_ns()}.json"
    argv = [python, str(HERE / script), *extra, "--json-out", str(out)]
    log(f"$ {' '.join(argv)}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)
    try:
        status = proc.wait(args.script_timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the scripts stop their workers on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    if status != 0 or not out.exists():
        log(f"  {script} exited with status {status} and no result")
        return None
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def sizes(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    """The size options among ``names`` that were given here, as the scripts spell them."""
    flags = []
    for name in names:
        value = getattr(args, name.replace("-", "_"))
        if value is not None:
            flags += [f"--{name}", str(value)]
    return flags


def redis_like(args: argparse.Namespace, broker: str) -> list[Row]:
    """compare_redis.py once per framework and repeat, frameworks interleaved; medians."""
    metrics = RABBITMQ_METRICS if broker == "rabbitmq" else REDIS_METRICS
    rows = {key: Row(broker, metric) for key, metric in metrics.items()}
    peers_python = interpreter(args, "peers")
    assert peers_python is not None
    help_text = subprocess.run(
        [peers_python, str(HERE / "compare_redis.py"), "--help"], capture_output=True, text=True, check=False
    ).stdout
    if broker == "rabbitmq" and "--broker" not in help_text.replace("--asyncq-broker", ""):
        # No RabbitMQ peers in compare_redis.py yet: asyncq alone, on RabbitMQ.
        frameworks: tuple[str, ...] = ("asyncq",)
        broker_flags = ["--asyncq-broker", RABBITMQ_URL]
        note = "compare_redis.py has no --broker: asyncq alone (--asyncq-broker), no peer measured"
    else:
        frameworks = RABBITMQ_FRAMEWORKS if broker == "rabbitmq" else REDIS_FRAMEWORKS
        broker_flags = ["--broker", "rabbitmq"] if broker == "rabbitmq" else []
        note = ""
    size_flags = sizes(args, ("tasks", "sleepers", "round-trips", "enqueues"))
    samples: dict[str, dict[str, list[float]]] = {}
    skipped: dict[str, str] = {}
    for _ in range(args.repeat):
        for name in frameworks:
            python = interpreter(args, "arq") if name == "arq" else peers_python
            if python is None:
                skipped[name] = "no interpreter (--python arq=..., requirements-arq.txt)"
            if name in skipped:
                continue
            data = run_script(args, python, "compare_redis.py", ["--only", name, *broker_flags, *size_flags])
            result = data.get("result") if data else None
            if not result:  # not importable there, or no such peer on this broker
                child_notes = (data or {}).get("notes") or ["no result"]
                skipped[name] = str(child_notes[0])
                continue
            for key, value in result.items():
                if value is not None and key in rows:
                    samples.setdefault(name, {}).setdefault(key, []).append(float(value))
    extra_notes: dict[str, list[str]] = {}
    for name, measured in samples.items():
        for key, values in measured.items():
            median = statistics.median(values)
            if name == "asyncq":
                rows[key].asyncq = median
            elif name.startswith("asyncq+"):
                extra_notes.setdefault(key, []).append(f"{name}: {median:,.2f}")
            else:
                rows[key].peers[name] = median
    notes = [note] if note else []
    notes += [f"{name} {reason}" for name, reason in skipped.items()]
    if broker == "rabbitmq" and not note and "enqueue" in rows:
        interleaved = confirmed_rounds(args, peers_python)
        if interleaved is not None:  # the same seconds of the server for every row
            rows["enqueue"].asyncq, rows["enqueue"].peers, extra_notes["enqueue"] = interleaved
    for key, row in rows.items():
        row.note = "; ".join(notes + extra_notes.get(key, []))
    return [row for row in rows.values() if row.asyncq is not None or row.peers]


def confirmed_rounds(
    args: argparse.Namespace, python: str
) -> tuple[float, dict[str, float], list[str]] | None:
    """RabbitMQ's confirmed enqueue from ``rabbitmq_floor.py``'s rounds (rows in turns of 100).

    compare_redis.py measures each framework minutes apart, through the server's swings;
    these rounds give asyncq's median, the peers' medians and a note with the ceiling.
    """
    rounds = max(3, args.repeat)
    extra = ["--round-trips", "0", "--enqueue-rounds", str(rounds), *sizes(args, ("enqueues",))]
    rows = ["asyncq", "aiormq-bare", "dramatiq", "celery", "taskiq-aio-pika", "asyncq+redis-results"]
    data = run_script(args, python, "rabbitmq_floor.py", [*extra, "--rows", ",".join(rows)])
    if not data:
        return None
    rates: dict[str, list[float]] = data["enqueue_rounds"]
    medians = {row: statistics.median(values) for row, values in rates.items()}

    def per_round(row: str) -> str:
        ratios = [a / b for a, b in zip(rates["asyncq"], rates[row], strict=True)]
        return f"{row} {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"

    peers = {row: medians[row] for row in ("dramatiq", "celery", "taskiq-aio-pika")}
    notes = [
        f"confirmed enqueue: {rounds} interleaved rounds of rabbitmq_floor.py; bare ceiling "
        f"{medians['aiormq-bare']:,.0f}/s; asyncq / row per round: "
        + ", ".join(per_round(row) for row in ("aiormq-bare", *peers))
        + f"; asyncq+redis-results: {medians['asyncq+redis-results']:,.0f}"
    ]
    return medians["asyncq"], peers, notes


def sqlite(args: argparse.Namespace) -> list[Row]:
    python = interpreter(args, "peers")
    assert python is not None
    extra = ["--trees", f"current={ROOT}", "--rounds", str(args.repeat), "--huey-python", python]
    data = run_script(args, python, "sqlite_roundtrip.py", extra + sizes(args, ("round-trips", "enqueues")))
    rows = {key: Row("sqlite", metric) for key, metric in SQLITE_METRICS.items()}
    for name, medians in (data or {}).get("medians", {}).items():
        for key, value in medians.items():
            if key not in rows:
                continue
            if name.startswith("asyncq"):
                rows[key].asyncq = value
            else:
                rows[key].peers[name.replace(" SqliteHuey", "")] = value
    return list(rows.values()) if data else []


def postgres(args: argparse.Namespace) -> list[Row]:
    python = interpreter(args, "pg")
    if python is None:
        log("postgres: skipped, no interpreter with the PostgreSQL peers (--python pg=...)")
        return []
    extra = ["--repeat", str(args.repeat), *sizes(args, ("tasks", "round-trips", "enqueues"))]
    data = run_script(args, python, "compare_postgres.py", extra)
    rows = {key: Row("postgres", metric) for key, metric in POSTGRES_METRICS.items()}
    for name, result in (data or {}).get("results", {}).items():
        for key, value in result.items():
            if key not in rows or value is None:
                continue
            if name == "asyncq":
                rows[key].asyncq = value
            else:
                rows[key].peers[name] = value
    return list(rows.values()) if data else []


def cpu(args: argparse.Namespace) -> list[Row]:
    python = interpreter(args, "peers")
    assert python is not None
    extra = ["--repeat", str(args.repeat), *sizes(args, ("cpu-tasks", "mixed-cpu", "io-tasks", "cpu-ms"))]
    data = run_script(args, python, "compare_cpu.py", extra)
    rows = []
    for workload, figures in (data or {}).get("seconds", {}).items():
        row = Row("redis", CPU_METRICS[workload])
        for label, seconds in figures.items():
            if label.startswith("asyncq "):
                row.asyncq = seconds
            else:
                row.peers[label] = seconds
        rows.append(row)
    return rows


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if unit in ("tasks/s", "/s") else f"{value:.2f}"


def print_summary(rows: list[Row]) -> None:
    log("")
    head = ("broker", "workload", "unit", "asyncq", "best peer", "its figure", "asyncq ahead")
    widths = (9, 24, 8, 10, 44, 11, 13)
    cells = [h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True))]
    cells[4] = "  " + head[4].ljust(widths[4] - 2)
    log("".join(cells))
    for row in rows:
        best = row.best()
        ratio = row.ratio()
        cells = (
            row.broker.ljust(widths[0]),
            row.label.ljust(widths[1]),
            row.unit.ljust(widths[2]),
            fmt(row.asyncq, row.unit).rjust(widths[3]),
            "  " + (best[0] if best else "(no peer measured)").ljust(widths[4] - 2),
            fmt(best[1] if best else None, row.unit).rjust(widths[5]),
            (f"{ratio:.2f}x" if ratio else "-").rjust(widths[6]),
        )
        log("".join(cells))
    log("asyncq ahead: rates asyncq / best peer, times best peer / asyncq; > 1 means asyncq is ahead.")
    for note in sorted({f"{row.broker}: {row.note}" for row in rows if row.note}):
        log(f"  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--brokers", default=",".join(BROKERS), help="comma-separated: " + ", ".join(BROKERS))
    parser.add_argument("--cpu", action="store_true", help="also the CPU-bound and mixed workloads (Redis)")
    parser.add_argument("--repeat", type=int, default=1, help="runs (rounds) of each script; medians")
    parser.add_argument("--python", action="append", default=[], metavar="GROUP=PATH", help="peers, pg, arq")
    for name in ("tasks", "sleepers", "round-trips", "enqueues", "cpu-tasks", "mixed-cpu", "io-tasks"):
        parser.add_argument(f"--{name}", type=int, help="passed to the scripts that take it")
    parser.add_argument("--cpu-ms", type=float, help="passed to compare_cpu.py")
    parser.add_argument("--script-timeout", type=float, default=3600.0, help="seconds one script may take")
    parser.add_argument("--json-out", help="also write the summary rows to this file as JSON")
    args = parser.parse_args()
    args.pythons = dict(item.split("=", 1) for item in args.python)
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    for bad in set(brokers) - set(BROKERS):
        parser.error(f"unknown broker {bad!r}; choose from {', '.join(BROKERS)}")
    args.work_dir = tempfile.mkdtemp(prefix="asyncq-compare-all-")
    rows: list[Row] = []
    try:
        for broker in brokers:
            log(f"=== {broker}")
            if broker in ("redis", "rabbitmq"):
                rows += redis_like(args, broker)
            elif broker == "sqlite":
                rows += sqlite(args)
            else:
                rows += postgres(args)
        if args.cpu:
            log("=== cpu-bound and mixed (Redis)")
            rows += cpu(args)
    except KeyboardInterrupt:
        log("interrupted; the figures so far:")
    print_summary(rows)
    if args.json_out:
        payload = [
            {
                "broker": row.broker,
                "workload": row.label,
                "unit": row.unit,
                "higher_is_better": row.higher,
                "asyncq": row.asyncq,
                "peers": row.peers,
                "best_peer": row.best(),
                "ratio": row.ratio(),
                "note": row.note,
            }
            for row in rows
        ]
        Path(args.json_out).write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
