"""Flow control in one worker process, over the memory and SQLite stores (see conftest's ``app``)."""

from __future__ import annotations

import asyncio

from asyncq import App
from tests.helpers import until

TIMEOUT = 15.0


async def test_a_task_waiting_on_its_key_gives_its_worker_slot_back(app: App) -> None:
    release = asyncio.Event()

    @app.task(concurrency_key="key", max_concurrency=1)
    async def hold(key: str) -> str:
        await release.wait()
        return key

    @app.task
    async def quick() -> str:
        return "done"

    async with app.worker(concurrency=2, hostname="w1") as worker:
        assert worker.prefetch == 4  # a keyed task leaves room for messages waiting on their key
        first, second = await hold.enqueue("k"), await hold.enqueue("k")
        inspect = app.control.inspect(destination=["w1"], timeout=2.0)

        async def one_running_one_waiting() -> bool:
            stats = (await inspect.stats()).get("w1")
            state = stats.limits["concurrency"][hold.name] if stats is not None else {}
            return state.get("running") == {"k": 1} and state.get("waiting") == {"k": 1}

        await until(one_running_one_waiting, "one hold running and one waiting in the stats")
        assert (await inspect.stats())["w1"].held == 1  # the `held` of the CLI and the dashboard
        # Two slots: one runs the first hold; the waiting one gave its slot back.
        assert await (await quick.enqueue()).get(timeout=TIMEOUT) == "done"
        release.set()
        assert [await first.get(timeout=TIMEOUT), await second.get(timeout=TIMEOUT)] == ["k", "k"]
        limits = (await inspect.stats())["w1"].limits["concurrency"][hold.name]
        assert limits == {"max_concurrency": 1, "key": "argument 'key'", "running": {}, "waiting": {}}


async def test_keys_do_not_hold_each_other_up(app: App) -> None:
    gates = {"a": asyncio.Event(), "b": asyncio.Event()}
    running: dict[str, int] = {"a": 0, "b": 0}
    peak: dict[str, int] = {"a": 0, "b": 0}

    @app.task(concurrency_key=lambda tenant, **_: tenant, max_concurrency=2)
    async def job(tenant: str, index: int) -> int:
        running[tenant] += 1
        peak[tenant] = max(peak[tenant], running[tenant])
        await gates[tenant].wait()
        running[tenant] -= 1
        return index

    async with app.worker(concurrency=4):
        a_jobs = [await job.enqueue("a", i) for i in range(4)]
        b_jobs = [await job.enqueue("b", i) for i in range(2)]
        gates["b"].set()  # "a" is full and has waiters: "b" runs anyway
        assert [await r.get(timeout=TIMEOUT) for r in b_jobs] == [0, 1]
        assert running["a"] == 2
        gates["a"].set()
        assert sorted([await r.get(timeout=TIMEOUT) for r in a_jobs]) == [0, 1, 2, 3]
    assert peak["a"] == 2


async def test_rate_limit_state_in_stats(app: App) -> None:
    @app.task(rate_limit="100/m", rate_limit_scope="worker")
    async def local() -> None: ...

    @app.task(rate_limit="10/s")
    async def shared() -> None: ...

    async with app.worker(hostname="w1"):
        inspect = app.control.inspect(destination=["w1"], timeout=2.0)
        await until(lambda: inspect.stats(), "the worker to answer")
        rates = (await inspect.stats())["w1"].limits["rate_limits"]
        assert rates == {
            local.name: {"rate_limit": "100/m", "scope": "worker", "waiting": 0},
            shared.name: {"rate_limit": "10/s", "scope": "global", "waiting": 0},
        }


async def test_held_messages_send_task_waiting_events(app: App) -> None:
    release = asyncio.Event()

    @app.task(rate_limit="5/s")
    async def paced() -> None: ...

    @app.task(concurrency_key="key", max_concurrency=1)
    async def single(key: str) -> None:
        await release.wait()

    events = await app.events.subscribe()
    waiting: list[dict[str, object]] = []

    async def collect() -> None:
        async for event in events:
            if event["type"] == "task-waiting":
                waiting.append(event)

    reader = asyncio.create_task(collect())
    try:
        async with app.worker(send_events=True):
            paced_runs = [await paced.enqueue() for _ in range(3)]
            held = [await single.enqueue("k"), await single.enqueue("k")]
            await until(
                lambda: {e["limit"] for e in waiting} == {"rate_limit", "concurrency_key"}, "both waits"
            )
            release.set()
            for result in paced_runs + held:
                await result.get(timeout=TIMEOUT)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await events.aclose()
    by_limit = {e["limit"]: e for e in waiting}
    assert by_limit["concurrency_key"]["key"] == "k" and by_limit["concurrency_key"]["name"] == single.name
    wait = by_limit["rate_limit"]["wait"]
    assert isinstance(wait, float) and 0 < wait <= 0.4


async def test_a_worker_stopped_while_messages_wait_gives_back_messages_and_slots(app: App) -> None:
    release = asyncio.Event()

    @app.task(concurrency_key="key", max_concurrency=1)
    async def hold(key: str) -> str:
        await release.wait()
        return key

    first, second = await hold.enqueue("k"), await hold.enqueue("k")
    async with app.worker(hostname="w1", shutdown_timeout=0.1):
        inspect = app.control.inspect(destination=["w1"], timeout=2.0)

        async def one_waiting() -> bool:
            stats = (await inspect.stats()).get("w1")
            return stats is not None and stats.limits["concurrency"][hold.name]["waiting"] == {"k": 1}

        await until(one_waiting, "the second hold to wait for the key")
    # Stopped: the running one was cancelled after the grace, the waiting one at once; both
    # messages went back, and the slot too (a leaked one would hold the next worker up).
    release.set()
    async with app.worker(hostname="w2"):
        assert [await first.get(timeout=TIMEOUT), await second.get(timeout=TIMEOUT)] == ["k", "k"]
