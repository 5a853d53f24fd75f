"""Periodic tasks across processes: three ``asyncq run --beat`` workers send each tick once.

Each store is tested the same way: start three workers with the beat on one store, watch a
one-second entry until ``BEAT_TEST_TICKS`` ticks were sent and every scheduler took part,
SIGTERM them, then check every tick was sent once and
run once (the record file gets a line per run, so a tick run twice would show). Also: a task
due in two days survives worker restarts, and ``asyncq beat --list`` shows the entries.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from asyncq import App
from tests.acceptance.conftest import ROOT, asyncq, wait_for
from tests.services import require_service

APP = "tests.apps.beat_app:app"
ENTRY = "every-second"
#: Distinct ticks watched (one a second); a soak run raises it with BEAT_TEST_TICKS.
TICKS = int(os.environ.get("BEAT_TEST_TICKS", "5"))
SENT = re.compile(r"sent \S+\[(?P<id>[0-9a-f-]+)\] for tick (?P<tick>\S+) of '" + ENTRY + "'")


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def env(request: pytest.FixtureRequest, store_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The workers' environment over one store: the embedded SQLite file, or Redis."""
    env = dict(store_env)
    if request.param == "redis":
        base = require_service("redis")
        prefix = f"asyncq-test-beat-{uuid.uuid4().hex[:12]}"
        url = f"{base}{'&' if '?' in base else '?'}key_prefix={prefix}"
        env["ASYNCQ_BROKER_URL"] = env["ASYNCQ_RESULT_BACKEND"] = url
        yield env
        _delete_redis_keys(base, prefix)
    else:
        yield env


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def durable_env(request: pytest.FixtureRequest, store_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Workers' environment over each durable broker (results in the SQLite file), own queue."""
    env = dict(store_env)
    env["ASYNCQ_TASK_DEFAULT_QUEUE"] = f"eta-{uuid.uuid4().hex[:12]}"
    if request.param == "redis":
        base = require_service("redis")
        prefix = f"asyncq-test-eta-{uuid.uuid4().hex[:12]}"
        env["ASYNCQ_BROKER_URL"] = f"{base}{'&' if '?' in base else '?'}key_prefix={prefix}"
        yield env
        _delete_redis_keys(base, prefix)
    elif request.param == "rabbitmq":
        from tests.conformance.drivers_rabbitmq import _rabbitmqctl

        base = require_service("rabbitmq")
        vhost = f"asyncq-test-eta-{uuid.uuid4().hex[:12]}"
        user = urlsplit(base).username or "guest"
        private = _rabbitmqctl("add_vhost", vhost) and _rabbitmqctl(
            "set_permissions", "-p", vhost, user, ".*", ".*", ".*"
        )
        # Without rabbitmqctl (a remote server) the queue name alone isolates the test.
        url = urlunsplit(urlsplit(base)._replace(path="/" + quote(vhost, safe=""))) if private else base
        env["ASYNCQ_BROKER_URL"] = url
        yield env
        if private:
            _rabbitmqctl("delete_vhost", vhost)
    else:
        yield env


def _delete_redis_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url.split("?", 1)[0])
    try:
        keys = list(client.scan_iter(match=f"*{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def log_of(proc: subprocess.Popen[str]) -> str:
    return Path(proc.log_path).read_text()  # type: ignore[attr-defined]


def all_started(workers: list[subprocess.Popen[str]]) -> bool:
    for proc in workers:
        if proc.poll() is not None:
            pytest.fail(f"a worker exited with {proc.returncode}:\n{log_of(proc)[-3000:]}")
    return all("beat started" in log_of(p) for p in workers)


def sent_ticks_of(workers: list[subprocess.Popen[str]]) -> list[dict[str, str]]:
    return [m.groupdict() for p in workers for m in SENT.finditer(log_of(p))]


def took_part(proc: subprocess.Popen[str]) -> bool:
    """The scheduler sent a tick or saw another one's claim on it."""
    log = log_of(proc)
    return "claimed_elsewhere" in log or SENT.search(log) is not None


def watched(workers: list[subprocess.Popen[str]], ticks: int) -> bool:
    return len({s["tick"] for s in sent_ticks_of(workers)}) >= ticks and all(map(took_part, workers))


def stop(workers: list[subprocess.Popen[str]]) -> None:
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    for proc in workers:
        assert proc.wait(timeout=60) == 0, log_of(proc)[-3000:]


def test_three_workers_with_beat_send_each_tick_once(
    env: dict[str, str], start_worker: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    record = tmp_path / "runs.tsv"
    env["BEAT_RECORD_FILE"] = str(record)
    workers = [start_worker(APP, "--beat", "--concurrency", "4", env=env) for _ in range(3)]
    try:
        wait_for(lambda: all_started(workers), timeout=60, what="three beats to start")
        wait_for(lambda: record.exists() and record.stat().st_size > 0, timeout=30, what="a first run")
        wait_for(lambda: watched(workers, TICKS), timeout=60 + TICKS, what=f"{TICKS} ticks from three beats")
    finally:
        stop(workers)

    runs = [line.split("\t") for line in record.read_text().splitlines()]
    run_ticks = Counter(tick for tick, _, _ in runs)
    assert [tick for tick, count in run_ticks.items() if count > 1] == [], "a tick ran twice"
    sent = sent_ticks_of(workers)
    sent_ticks = Counter(s["tick"] for s in sent)
    assert [tick for tick, count in sent_ticks.items() if count > 1] == [], "a tick was sent twice"
    assert set(run_ticks) <= set(sent_ticks)
    assert {run_id for _, run_id, _ in runs} <= {s["id"] for s in sent}
    # Every second from the first tick to the last was sent: nothing skipped in between.
    instants = sorted(datetime.fromisoformat(tick) for tick in sent_ticks)
    expected = int((instants[-1] - instants[0]).total_seconds()) + 1
    assert len(instants) == expected, f"ticks missing between {instants[0]} and {instants[-1]}"
    assert len(instants) >= TICKS
    # The runs too, apart from the last few still queued when the workers stopped.
    unrun = set(instants) - {datetime.fromisoformat(tick) for tick in run_ticks}
    assert all(tick >= instants[-3] for tick in unrun), f"ticks sent but never run: {sorted(unrun)}"
    # Every scheduler took part: the claims, not a single lucky process, kept it to one.
    assert sum(1 for p in workers if took_part(p)) == 3


def test_a_task_due_in_two_days_survives_worker_restarts(
    durable_env: dict[str, str], start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    env = durable_env
    queue = env["ASYNCQ_TASK_DEFAULT_QUEUE"]
    app = App(
        "beat-app",
        broker=env["ASYNCQ_BROKER_URL"],
        backend=env["ASYNCQ_RESULT_BACKEND"],
        config={"task_default_queue": queue},
    )

    async def publish_far_future() -> str:
        try:
            eta = datetime.now(UTC) + timedelta(days=2)
            result = await app.send_task("tasks.add", [40, 2], eta=eta)
            return result.id
        finally:
            await app.aclose()

    async def run_one_now() -> int:
        # A task due now, whose result proves the worker consumed the queue the far one sits in.
        try:
            return int(await (await app.send_task("tasks.add", [1, 1])).get(timeout=60))
        finally:
            await app.aclose()

    async def waiting() -> int:
        try:
            await app.connect()
            return await app.broker.queue_length(queue)
        finally:
            await app.aclose()

    async def purge() -> None:
        try:
            await app.purge(queue)
        finally:
            await app.aclose()

    asyncio.run(publish_far_future())
    try:
        for _ in range(2):
            worker = start_worker(APP, env=env)
            try:
                assert asyncio.run(run_one_now()) == 2
            finally:
                stop([worker])
            assert asyncio.run(waiting()) == 1
    finally:
        asyncio.run(purge())


def test_beat_list_prints_every_entry_with_its_next_run_times(store_env: dict[str, str]) -> None:
    done = asyncq("beat", APP, "--list", env=store_env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    headers = [line for line in lines if not line.startswith("  ")]
    assert [h.split(":")[0] for h in headers] == [
        "add-every-monday-morning",
        "cleanup",
        ENTRY,
        "tests.apps.beat_app.poll",
    ]
    assert "tasks.add on crontab(minute='30', hour='7', day_of_week='1'" in headers[0]
    monday = lines[1:4]
    for line in monday:
        when = datetime.fromisoformat(line.strip())
        assert (when.weekday(), when.hour, when.minute) == (0, 7, 30)
        assert when.utcoffset() in (timedelta(hours=1), timedelta(hours=2))  # Berlin, CET or CEST
    assert len(lines) == 4 * 4


def test_beat_alone_sends_ticks_and_stops_on_sigterm(store_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "beat.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "asyncq", "beat", APP],
            env=store_env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for(lambda: SENT.search(log.read_text()) is not None, timeout=60, what="a tick to be sent")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    assert "beat stopped" in log.read_text()
