"""Global limits across three ``asyncq run`` workers: the embedded SQLite store, Redis, PostgreSQL.

Every start (and end) goes to a ledger file; the assertions read it back: a 20/s rate limit
never starts more than ~20 tasks in any 1 s window, a concurrency key limited to 2 never has
3 running, and the slots of a SIGKILLed worker come back once their leases run out.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import Popen

import pytest

from asyncq import App
from asyncq.flow.store import limit_store_for
from tests.acceptance.conftest import wait_for
from tests.apps import flow_app
from tests.conformance.drivers_postgres import postgres_url  # noqa: F401 - fixture
from tests.helpers import delete_prefix, unique_prefix
from tests.services import require_service

APP = "tests.apps.flow_app:app"
WORKERS = 3
LEASE = 3.0


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def flow_env(request: pytest.FixtureRequest, store_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The workers' environment: one broker (and its limit store), a short concurrency lease."""
    env = dict(store_env)
    env["ASYNCQ_FLOW_LEASE"] = str(LEASE)
    prefix = None
    if request.param == "redis":
        prefix = unique_prefix()
        url = require_service("redis")
        env["ASYNCQ_BROKER_URL"] = f"{url}?visibility_timeout=2&key_prefix={prefix}"
        env["ASYNCQ_RESULT_BACKEND"] = f"{url}?key_prefix={prefix}"
    elif request.param == "postgres":
        url = request.getfixturevalue("postgres_url")  # a fresh schema, dropped afterwards
        env["ASYNCQ_BROKER_URL"] = url + "&visibility_timeout=2"
        env["ASYNCQ_RESULT_BACKEND"] = url
    yield env
    if prefix is not None:
        asyncio.run(delete_prefix(require_service("redis"), prefix))


def _app(env: dict[str, str]) -> App:
    return App("flow-app", broker=env["ASYNCQ_BROKER_URL"], backend=env["ASYNCQ_RESULT_BACKEND"])


def _send(env: dict[str, str], messages: list[object]) -> None:
    async def send() -> None:
        app = _app(env)
        try:
            await app.send_many(messages)  # type: ignore[arg-type]
        finally:
            await app.aclose()

    asyncio.run(send())


def _lines(ledger: Path) -> list[list[str]]:
    return [line.split() for line in ledger.read_text().splitlines()] if ledger.exists() else []


def _start_workers(
    start: Callable[..., Popen[str]], env: dict[str, str], count: int = WORKERS
) -> list[Popen[str]]:
    """Start ``count`` workers and wait until each consumes (so every one gets a share)."""
    workers = [start(APP, "--concurrency", "4", "--hostname", f"flow-{i}", env=env) for i in range(count)]
    wait_for(lambda: all("consuming" in _log(w) for w in workers), what="every worker to start consuming")
    return workers


def _log(worker: Popen[str]) -> str:
    return Path(worker.log_path).read_text()  # type: ignore[attr-defined]


def _stop(workers: list[Popen[str]]) -> None:
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(timeout=30) == 0, _log(worker)


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])  # ends first on ties
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_global_rate_limit_holds_across_workers(
    flow_env: dict[str, str], start_worker: Callable[..., Popen[str]], tmp_path: Path
) -> None:
    ledger, total = tmp_path / "ledger", 70
    workers = _start_workers(start_worker, flow_env)
    _send(flow_env, [flow_app.tick.build_message((i, str(ledger))) for i in range(total)])
    wait_for(lambda: len(_lines(ledger)) == total, timeout=60, what="every tick to start")
    _stop(workers)

    lines = _lines(ledger)
    starts = sorted(float(line[2]) for line in lines)
    assert sorted(int(line[1]) for line in lines) == list(range(total)), "a tick was lost or ran twice"
    assert len({line[3] for line in lines}) == WORKERS, "every worker should have started some"
    # The busiest 1 s window (starting at a start): 20 starts booked 50 ms apart, one more at
    # the window's far edge; a worker whose loop wakes late (three processes on a busy machine)
    # may bunch two more into it.
    busiest = max(sum(1 for t in starts[i:] if t < first + 1.0) for i, first in enumerate(starts))
    assert busiest <= 23, f"{busiest} starts in one second under a 20/s limit"
    assert starts[-1] - starts[0] >= (total - 1) / 20 - 0.25, "the limit was not enforced cluster-wide"
    print(f"\n{flow_env['ASYNCQ_BROKER_URL'].split(':')[0]}: busiest second {busiest} starts")


def test_concurrency_key_never_exceeds_its_limit(
    flow_env: dict[str, str], start_worker: Callable[..., Popen[str]], tmp_path: Path
) -> None:
    ledger, per_tenant, tenants = tmp_path / "ledger", 8, ("a", "b", "c")
    workers = _start_workers(start_worker, flow_env)
    _send(
        flow_env,
        [
            flow_app.tenant_job.build_message((tenant, i, str(ledger)))
            for i in range(per_tenant)
            for tenant in tenants
        ],
    )
    wait_for(
        lambda: len(_lines(ledger)) == 2 * per_tenant * len(tenants), timeout=60, what="every job to end"
    )
    _stop(workers)

    opened: dict[tuple[str, str], float] = {}
    spans: defaultdict[str, list[tuple[float, float]]] = defaultdict(list)
    for kind, tenant, index, at, _pid in _lines(ledger):
        if kind == "start":
            opened[tenant, index] = float(at)
        else:
            spans[tenant].append((opened.pop((tenant, index)), float(at)))
    assert not opened and sorted(spans) == list(tenants)
    overlaps = {tenant: _max_overlap(s) for tenant, s in spans.items()}
    assert max(overlaps.values()) <= 2, overlaps
    assert min(overlaps.values()) == 2, (
        f"the limit, not the workers, should have bounded each key: {overlaps}"
    )


def test_killed_workers_key_slots_come_back_after_the_lease(
    flow_env: dict[str, str], start_worker: Callable[..., Popen[str]], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    first = start_worker(APP, "--concurrency", "4", "--hostname", "flow-doomed", env=flow_env)
    # Two long runs take both slots of "k" (shorter when delivered again), two more wait for them.
    _send(
        flow_env,
        [
            flow_app.tenant_job.build_message(("k", i, str(ledger)), kwargs={"first_for": 60.0})
            for i in range(4)
        ],
    )
    wait_for(lambda: len(_lines(ledger)) == 2, what="two jobs to take the key's slots")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)

    async def held() -> int:
        app = _app(flow_env)
        await app.connect()
        store = limit_store_for(app.broker)
        assert store is not None
        await store.connect()
        try:
            return await store.count(f"{flow_app.tenant_job.name}:k")
        finally:
            await store.aclose()
            await app.aclose()

    assert asyncio.run(held()) == 2, "the dead worker's slots should be held until their leases end"
    wait_for(lambda: asyncio.run(held()) == 0, timeout=LEASE + 5, what="the dead worker's leases to run out")

    workers = _start_workers(start_worker, flow_env, count=2)
    wait_for(
        lambda: len({line[2] for line in _lines(ledger) if line[0] == "end"}) == 4, what="every job to end"
    )
    _stop(workers)
