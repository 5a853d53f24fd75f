"""The chaos harness: workers under a supervisor, a paced producer, one fault, and the count.

A run (``run_scenario``) on one broker:

1. starts the servers it needs of its own (a Redis, a RabbitMQ node, a PostgreSQL cluster, a
   Tansu or a moto server for the broker, always a Redis for the result backend), never the
   shared ones;
2. starts 2 ``asyncq run`` worker processes (concurrency 50) under a supervisor thread that
   restarts any that exits, as systemd or Kubernetes would;
3. sends ``total`` tasks at a steady pace; each sleeps 0-50 ms and adds a row to a SQLite
   ledger; in the poison scenario every tenth one calls ``os._exit(1)`` instead;
4. injects the scenario's fault while tasks are being sent and run;
5. waits until every healthy task is in the ledger and every poison one is dead-lettered, then
   counts: lost, duplicated, healthy dead-lettered, poison dead letters, producer errors.

Brokers are named ``sqlite``, ``redis``, ``rabbitmq-classic``, ``rabbitmq-quorum``,
``postgres``, ``kafka`` and ``sqs``; a new durable driver is one more entry in ``BROKERS``, one
branch in ``Rig._broker_url`` and, for scenarios that mean nothing there, ``NOT_APPLICABLE``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from asyncq import App
from tests.apps import chaos_app
from tests.servers import MotoServer, PostgresCluster, RabbitNode, RedisServer, SessionServer, TansuServer

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.chaos_app:app"
BROKERS = ("sqlite", "redis", "rabbitmq-classic", "rabbitmq-quorum", "postgres", "kafka", "sqs")
WORKERS = 2
CONCURRENCY = 50
POISON_EVERY = 10  # 10% poison in the poison scenario


def task_id(index: int) -> str:
    return f"chaos-{index:05d}"


def index_of(message_id: str) -> int | None:
    prefix, _, number = message_id.rpartition("-")
    return int(number) if prefix == "chaos" and number.isdigit() else None


# -- the fleet of worker processes ---------------------------------------------------------------


class Supervisor:
    """Keeps ``WORKERS`` ``asyncq run`` processes alive, restarting any that exits."""

    def __init__(self, env: dict[str, str], logs: Path, workers: int = WORKERS) -> None:
        self.env, self.logs, self.workers = env, logs, workers
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * workers
        self.restarts = 0
        self.exit_codes: Counter[int] = Counter()
        self._files: list[IO[bytes]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="chaos-supervisor", daemon=True)

    def start(self) -> None:
        for slot in range(self.workers):
            self._spawn(slot)
        self._thread.start()

    def _spawn(self, slot: int) -> None:
        log = open(self.logs / f"worker-{slot}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._files.append(log)
        self.procs[slot] = subprocess.Popen(
            [sys.executable, "-m", "asyncq", "run", APP, "--concurrency", str(CONCURRENCY)],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def _watch(self) -> None:
        while not self._stopping.wait(0.1):
            with self._lock:
                for slot, proc in enumerate(self.procs):
                    if proc is not None and proc.poll() is not None and not self._stopping.is_set():
                        self.exit_codes[proc.returncode] += 1
                        self.restarts += 1
                        self._spawn(slot)

    def kill_one(self, rng: random.Random) -> None:
        """SIGKILL a random worker; the watcher starts its replacement."""
        with self._lock:
            proc = self.procs[rng.randrange(self.workers)]
            if proc is not None and proc.poll() is None:
                proc.kill()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for log in self._files:
            log.close()


# -- what a run found ----------------------------------------------------------------------------


@dataclass
class Row:
    """The outcome of one scenario on one broker: one line of the table."""

    scenario: str
    broker: str
    total: int = 0
    poison: int = 0
    lost: int = 0
    duplicates: int = 0
    healthy_dead: int = 0
    poison_dead_missing: int = 0  # poison messages with no dead letter
    poison_dead_extra: int = 0  # dead letters beyond one per poison message
    seconds: float = 0.0
    recovery: float | None = None  # from the end of the last fault to the last task done
    producer_errors: int = 0
    results_missing: int = 0  # healthy tasks that ran but have no result in the backend
    restarts: int = 0
    fault_failed: bool = False  # the fault itself could not be injected: the run proves nothing
    seed: int = 0  # of the fault's timing and the victims: rerun with it to repeat the run
    note: str = ""
    lost_ids: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The musts: nothing lost, no healthy task dead-lettered, one dead letter per poison."""
        return not (
            self.lost
            or self.healthy_dead
            or self.poison_dead_missing
            or self.poison_dead_extra
            or self.fault_failed
        )

    def line(self) -> str:
        if self.note.startswith("n/a"):
            return f"| {self.scenario} | {self.broker} | {self.note} | | | | | | | | |"
        poison = f"{self.poison - self.poison_dead_missing + self.poison_dead_extra}/{self.poison}"
        recovery = "-" if self.recovery is None else f"{self.recovery:.1f}"
        return (
            f"| {self.scenario} | {self.broker} | {self.lost} | {self.duplicates} | {self.healthy_dead} "
            f"| {poison if self.poison else '-'} | {self.seconds:.1f} | {recovery} "
            f"| {self.producer_errors} | {self.results_missing} | {self.restarts} |"
            + (f" {self.note}" if self.note else "")
        )


TABLE_HEADER = (
    "| scenario | broker | lost | duplicates | healthy dead-lettered | poison dead letters "
    "| time to complete (s) | recovery after fault (s) | producer errors | results missing "
    "| worker restarts |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


# -- the servers and settings of one run ---------------------------------------------------------


class Rig:
    """The servers, queue, ledger and worker environment of one run on one broker."""

    def __init__(
        self,
        broker: str,
        directory: Path,
        rabbit: RabbitNode | None = None,
        postgres: PostgresCluster | None = None,
    ) -> None:
        self.broker, self.directory = broker, directory
        self.queue = f"chaos-{uuid.uuid4().hex[:10]}"
        self.ledger = str(directory / "ledger.db")
        chaos_app.open_ledger(self.ledger).close()
        self.redis: RedisServer | None = None
        self.rabbit = rabbit
        self.postgres = postgres if broker == "postgres" else None
        self.memory_server: SessionServer | None = None  # Tansu or moto: state in memory only
        if broker == "redis":
            self.redis = RedisServer(directory / "broker-redis", appendonly=True)
            self.redis.start()
        elif broker in ("kafka", "sqs"):
            self.memory_server = TansuServer() if broker == "kafka" else MotoServer()
            self.memory_server.start()
        elif broker == "postgres" and postgres is None:
            self.postgres = PostgresCluster()
            try:
                self.postgres.init()
                self.postgres.start()
            except BaseException:
                self.postgres.remove()
                raise
        elif broker.startswith("rabbitmq") and rabbit is None:
            self.rabbit = RabbitNode(directory / "rabbit")
            self.rabbit.start()
        self._own_rabbit = rabbit is None and self.rabbit is not None
        self._own_postgres = postgres is None and self.postgres is not None
        # Persistent: the backend-restart scenario counts the results that did not survive.
        self.results = RedisServer(directory / "results-redis", appendonly=True)
        self.results.start()
        self.broker_url = self._broker_url()
        self.fault_over: float | None = None  # set by a fault whose end is not when it returns

    def _broker_url(self) -> str:
        if self.broker == "sqlite":
            return f"sqlite:///{self.directory / 'broker.db'}?visibility_timeout=3"
        if self.redis is not None:
            return self.redis.url + "?visibility_timeout=3"
        if self.postgres is not None:
            return self.postgres.url + "?visibility_timeout=3"
        if isinstance(self.memory_server, TansuServer):
            # A killed worker's partitions go to the other one when the group drops it.
            return self.memory_server.url + "?session_timeout=3"
        if isinstance(self.memory_server, MotoServer):
            # Short polls: a stopping worker's last receive ends soon.
            return self.memory_server.url + "&visibility_timeout=3&wait_time=1"
        assert self.rabbit is not None
        queue_type = self.broker.removeprefix("rabbitmq-")
        return self.rabbit.url + f"?queue_type={queue_type}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCQ_")}
        env.update(
            ASYNCQ_BROKER_URL=self.broker_url,
            ASYNCQ_RESULT_BACKEND=self.results.url,
            ASYNCQ_TASK_DEFAULT_QUEUE=self.queue,
            ASYNCQ_LOG_LEVEL="warning",
            PYTHONPATH=str(ROOT),
        )
        return env

    def app(self) -> App:
        return App("chaos-app", broker=self.broker_url, backend=self.results.url)

    def close(self) -> None:
        if self.rabbit is not None:
            with suppress(Exception):  # a shared node keeps running: leave it clean
                asyncio.run(self._delete_queue())
            if self._own_rabbit:
                self.rabbit.stop()
        self.results.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None and self._own_postgres:
            self.postgres.remove()
        if self.memory_server is not None:
            self.memory_server.stop()

    async def _delete_queue(self) -> None:
        app = self.app()
        try:
            await app.connect()
            await app.broker.delete_queue(self.queue)  # type: ignore[attr-defined]
        finally:
            await app.aclose()


# -- faults --------------------------------------------------------------------------------------

Fault = Callable[[Rig, Supervisor, random.Random], str]


def kill_workers(rig: Rig, fleet: Supervisor, rng: random.Random) -> str:
    """SIGKILL a random worker every 2-4 s, 5 times."""
    for _ in range(5):
        time.sleep(rng.uniform(2, 4))
        fleet.kill_one(rng)
    return ""


def restart_broker(rig: Rig, fleet: Supervisor, rng: random.Random) -> str:
    """Stop the broker server, keep it down 1 s, start it again on the same data."""
    time.sleep(3)
    server = rig.redis or rig.rabbit or rig.postgres
    if server is None:
        return "n/a"
    server.restart(outage=1.0)
    rig.fault_over = server.up_at  # clients may reconnect before rabbitmqctl says it booted
    return ""


def drop_connections(rig: Rig, fleet: Supervisor, rng: random.Random) -> str:
    """Close every client connection of the broker server, twice."""
    for _ in range(2):
        time.sleep(2.5)
        if rig.redis is not None:
            rig.redis.kill_clients()
        elif rig.rabbit is not None:
            rig.rabbit.close_all_connections()
        elif rig.postgres is not None:
            # Every backend of the broker's database: pool, LISTEN and producer connections.
            if not rig.postgres.terminate_clients():
                raise RuntimeError("no client backend to terminate")
        else:
            return "n/a"
    return ""


def no_fault(rig: Rig, fleet: Supervisor, rng: random.Random) -> str:
    """Nothing from outside: the poison messages are the fault."""
    return ""


def freeze_backend(rig: Rig, fleet: Supervisor, rng: random.Random) -> str:
    """SIGSTOP the result backend's Redis for 5 s, then SIGCONT."""
    time.sleep(2.5)
    rig.results.freeze()
    time.sleep(5)
    rig.results.thaw()
    return ""


def restart_backend(rig: Rig, fleet: Supervisor, rng: random.Random) -> str:
    """Stop the result backend's Redis, keep it down 5 s, start it again (empty)."""
    time.sleep(2.5)
    rig.results.restart(outage=5.0)
    rig.fault_over = rig.results.up_at
    return ""


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: Fault
    poison: bool = False
    send_seconds: float = 8.0  # the producer's window: the fault happens inside it


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("sigkill", kill_workers, send_seconds=16.0),
        Scenario("connection-drop", drop_connections),
        Scenario("broker-restart", restart_broker),
        Scenario("poison", no_fault, poison=True),
        Scenario("backend-stop", freeze_backend),
        Scenario("backend-restart", restart_backend),
    )
}


#: Why a scenario means nothing on a broker: (scenario, broker) -> the reason, for the table.
NOT_APPLICABLE = {
    ("broker-restart", "sqlite"): "no server",
    ("connection-drop", "sqlite"): "no server",
    ("broker-restart", "kafka"): "Tansu's memory storage does not survive a restart",
    ("connection-drop", "kafka"): "Tansu has no command to close its clients' connections",
    ("broker-restart", "sqs"): "moto keeps its queues in memory only",
    ("connection-drop", "sqs"): "HTTP requests: moto has no connections to close",
}


def applies(scenario: str, broker: str) -> bool:
    """Whether the scenario means anything there (see ``NOT_APPLICABLE``)."""
    return (scenario, broker) not in NOT_APPLICABLE


# -- the run -------------------------------------------------------------------------------------


async def produce(rig: Rig, total: int, seconds: float, poison: set[int], errors: list[str]) -> None:
    """Send ``total`` tasks evenly over ``seconds``; a failed send is counted and retried."""
    app = rig.app()
    rng = random.Random(total)
    messages = [
        (chaos_app.poison.build_message((i,), queue=rig.queue, task_id=task_id(i)))
        if i in poison
        else chaos_app.record.build_message(
            (i, rig.ledger, rng.randint(0, 50)), queue=rig.queue, task_id=task_id(i)
        )
        for i in range(total)
    ]
    batch = 10
    pause = seconds / (total / batch)
    start = time.monotonic()
    try:
        for n, first in enumerate(range(0, total, batch)):
            await asyncio.sleep(max(0.0, start + n * pause - time.monotonic()))
            while True:
                try:
                    async with asyncio.timeout(30):
                        await app.send_many(messages[first : first + batch])
                    break
                except Exception as exc:  # counted: the row reports producer errors
                    errors.append(repr(exc))
                    await asyncio.sleep(0.2)
    finally:
        with suppress(Exception):
            await app.aclose()


def ledger_counts(path: str) -> Counter[int]:
    db = sqlite3.connect(path, timeout=60)
    try:
        return Counter(dict(db.execute("SELECT idx, COUNT(*) FROM runs GROUP BY idx").fetchall()))
    finally:
        db.close()


async def dead_letter_counts(rig: Rig) -> Counter[int]:
    app = rig.app()
    try:
        async with asyncio.timeout(30):
            await app.connect()
            dead = await app.broker.dead_letters(rig.queue, limit=100_000)
    finally:
        with suppress(Exception):
            await app.aclose()
    return Counter(i for i in (index_of(d.id) for d in dead) if i is not None)


async def missing_results(rig: Rig, indices: list[int]) -> int:
    """How many of these tasks have no result record in the backend."""
    app = rig.app()
    try:
        async with asyncio.timeout(60):
            await app.connect()
            records = await app.backend.get_many([task_id(i) for i in indices])
    finally:
        with suppress(Exception):
            await app.aclose()
    return sum(1 for record in records if record is None)


def run_scenario(
    scenario: str,
    broker: str,
    *,
    total: int = 400,
    send_seconds: float | None = None,
    timeout: float = 180.0,
    rabbit: RabbitNode | None = None,
    postgres: PostgresCluster | None = None,
    directory: Path | None = None,
    seed: int | None = None,
) -> Row:
    """Run one scenario on one broker and return its row (never raises for a bad outcome)."""
    spec = SCENARIOS[scenario]
    if not applies(scenario, broker):
        return Row(scenario, broker, note=f"n/a: {NOT_APPLICABLE[scenario, broker]}")
    if seed is None:
        seed = random.randrange(2**32)
    with _directory(directory) as where:
        rig = Rig(broker, where, rabbit, postgres)
        try:
            window = spec.send_seconds if send_seconds is None else send_seconds
            row = _run(spec, rig, total, window, timeout, random.Random(seed))
            row.seed = seed
            return row
        finally:
            rig.close()


@contextmanager
def _directory(directory: Path | None) -> Iterator[Path]:
    if directory is not None:
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="asyncq-chaos-") as made:
        yield Path(made)


def _run(
    spec: Scenario, rig: Rig, total: int, send_seconds: float, timeout: float, rng: random.Random
) -> Row:
    poison = {i for i in range(total) if spec.poison and i % POISON_EVERY == POISON_EVERY - 1}
    healthy = set(range(total)) - poison
    row = Row(spec.name, rig.broker, total=total, poison=len(poison))
    fleet = Supervisor(rig.env(), rig.directory)
    errors: list[str] = []
    fault_end: list[float] = []
    fault_notes: list[str] = []

    def fault() -> None:
        try:
            fault_notes.append(spec.fault(rig, fleet, rng))
        except Exception as exc:  # reported in the row, and fails the run
            row.fault_failed = True
            fault_notes.append(f"fault failed: {exc!r}")
        fault_end.append(rig.fault_over or time.monotonic())

    fleet.start()
    started = time.monotonic()
    chaos = threading.Thread(target=fault, name="chaos-fault", daemon=True)
    chaos.start()
    try:
        asyncio.run(produce(rig, total, send_seconds, poison, errors))
        deadline = started + timeout
        done_at = _wait_done(rig, healthy, poison, deadline)
        # The count waits for the fault's end too: a worker killed after the last task is done
        # must still not lose or dead-letter anything.
        chaos.join(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        fleet.stop()
    finished = done_at or time.monotonic()
    counts = ledger_counts(rig.ledger)
    dead = asyncio.run(dead_letter_counts(rig))
    row.seconds = finished - started
    # None: everything was done before the fault ended (a slow rabbitmqctl, a late last kill).
    row.recovery = finished - fault_end[0] if fault_end and finished > fault_end[0] else None
    row.lost_ids = sorted(i for i in healthy if not counts[i] and not dead[i])
    row.lost = len(row.lost_ids)
    row.duplicates = sum(n - 1 for i, n in counts.items() if n > 1)
    row.healthy_dead = sum(1 for i in healthy if dead[i])
    row.poison_dead_missing = sum(1 for i in poison if not dead[i])
    row.poison_dead_extra = sum(dead[i] - 1 for i in poison if dead[i] > 1)
    row.producer_errors = len(errors)
    ran = [i for i in healthy if counts[i]]
    row.results_missing = asyncio.run(missing_results(rig, ran))
    row.restarts = fleet.restarts
    notes = [n for n in fault_notes if n]
    if done_at is None:
        notes.append(f"timed out after {timeout:.0f}s")
    if chaos.is_alive():
        notes.append("fault still running at the end")
    row.note = "; ".join(notes)
    return row


def _wait_done(rig: Rig, healthy: set[int], poison: set[int], deadline: float) -> float | None:
    """Wait until every task is in the ledger or dead-lettered (poison: dead-lettered); when."""
    polls = 0
    while time.monotonic() < deadline:
        missing = healthy - set(ledger_counts(rig.ledger))
        if not missing and not poison:
            return time.monotonic()
        polls += 1
        if not missing or polls % 4 == 0:  # a broker round trip: every 2 s only while some lack
            with suppress(Exception):  # the broker may be down right now; look again
                dead = set(asyncio.run(dead_letter_counts(rig)))
                if missing <= dead and poison <= dead:
                    return time.monotonic()
        time.sleep(0.5)
    return None


def describe(row: Row) -> dict[str, Any]:
    """The row as plain data, for a failure message."""
    return {k: v for k, v in row.__dict__.items() if k != "lost_ids"} | {"lost_ids": row.lost_ids[:20]}
