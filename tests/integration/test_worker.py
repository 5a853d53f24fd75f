"""The worker end to end on the embedded drivers: outcomes, retries, limits, routing, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from asyncq import App, State, current_task
from asyncq.exceptions import (
    NotRegistered,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
)
from tests.apps import process_tasks
from tests.helpers import until

TIMEOUT = 15.0


class Boom(Exception):
    pass


async def test_async_sync_and_await(app: App) -> None:
    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def mul(x: int, y: int) -> int:
        assert threading.current_thread() is not threading.main_thread()
        return x * y

    async with app.worker(concurrency=10):
        r = await add.enqueue(4, 4)
        assert await r.get(timeout=TIMEOUT) == 8
        assert await (await mul.enqueue(3, 5)) == 15
        assert await r.state() == State.SUCCESS
        assert await r.ready() and await r.successful()
        assert await app.AsyncResult(r.id).get(timeout=1) == 8


async def test_direct_call_runs_in_process(app: App) -> None:
    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def mul(x: int, y: int) -> int:
        return x * y

    assert await add(2, 3) == 5
    assert mul(2, 3) == 6


async def test_failure_reraises_original_type_with_remote_traceback(app: App) -> None:
    @app.task
    async def explode() -> None:
        raise Boom("kaboom")

    async with app.worker():
        r = await explode.enqueue()
        with pytest.raises(Boom, match="kaboom") as info:
            await r.get(timeout=TIMEOUT)
        assert "raise Boom" in info.value.__cause__.remote_traceback  # type: ignore[union-attr]
        assert await r.state() == State.FAILURE
        assert isinstance(await r.get(timeout=1, propagate=False), Boom)


async def test_retry_then_success_keeps_task_id(app: App) -> None:
    attempts: list[int] = []

    @app.task(bind=True, max_retries=5)
    async def flaky(self: Any) -> int:
        attempts.append(self.request.retries)
        if len(attempts) < 3:
            raise self.retry(exc=Boom("not yet"), countdown=0.05)
        return self.request.retries

    async with app.worker():
        r = await flaky.enqueue()
        assert await r.get(timeout=TIMEOUT) == 2
    assert attempts == [0, 1, 2]


async def test_max_retries_exceeded_raises_original(app: App) -> None:
    calls = 0

    @app.task(bind=True, max_retries=2, default_retry_delay=0.01)
    def always_fails(self: Any) -> None:
        nonlocal calls
        calls += 1
        try:
            raise Boom(f"attempt {calls}")
        except Boom as exc:
            raise self.retry(exc=exc) from exc

    async with app.worker():
        with pytest.raises(Boom, match="attempt 3"):
            await (await always_fails.enqueue()).get(timeout=TIMEOUT)
    assert calls == 3


async def test_autoretry_for_with_backoff(app: App) -> None:
    calls = 0

    @app.task(autoretry_for=(Boom,), max_retries=4, retry_backoff=0.01, retry_backoff_max=0.05)
    async def sometimes() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Boom("transient")
        return "ok"

    @app.task(autoretry_for=(Boom,), max_retries=4)
    async def wrong_error() -> None:
        raise ValueError("not retried")

    async with app.worker():
        assert await (await sometimes.enqueue()).get(timeout=TIMEOUT) == "ok"
        with pytest.raises(ValueError, match="not retried"):
            await (await wrong_error.enqueue()).get(timeout=TIMEOUT)
    assert calls == 3


async def test_async_time_limits(app: App) -> None:
    cleaned = asyncio.Event()

    @app.task(soft_time_limit=0.2, time_limit=5)
    async def soft() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.set()

    @app.task(time_limit=0.2)
    async def hard() -> None:
        await asyncio.sleep(30)

    async with app.worker():
        with pytest.raises(SoftTimeLimitExceeded):
            await (await soft.enqueue()).get(timeout=TIMEOUT)
        assert cleaned.is_set()
        with pytest.raises(TimeLimitExceeded):
            await (await hard.enqueue()).get(timeout=TIMEOUT)


async def test_thread_time_limits(app: App) -> None:
    @app.task(soft_time_limit=0.2, time_limit=5)
    def soft() -> str:
        try:
            while True:
                time.sleep(0.01)
        except SoftTimeLimitExceeded:
            return "cleaned up"

    @app.task(time_limit=0.2)
    def hard() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)

    async with app.worker():
        assert await (await soft.enqueue()).get(timeout=TIMEOUT) == "cleaned up"
        with pytest.raises(TimeLimitExceeded):
            await (await hard.enqueue()).get(timeout=TIMEOUT)


async def test_process_executor_and_limits() -> None:
    app = process_tasks.app
    async with app.worker(process_pool_size=1):
        assert await (await process_tasks.crunch.enqueue(1000)).get(timeout=30) == sum(
            i * i for i in range(1000)
        )
        first = await (await process_tasks.whoami.enqueue()).get(timeout=30)
        assert first["task"] == process_tasks.whoami.name and first["id"]
        assert await (await process_tasks.soft_limited.enqueue()).get(timeout=30) == "cleaned up"
        with pytest.raises(TimeLimitExceeded):
            await (await process_tasks.hard_limited.enqueue()).get(timeout=30)
        # The killed child was replaced: the next call runs in a new process.
        second = await (await process_tasks.whoami.enqueue()).get(timeout=30)
        assert second["pid"] != first["pid"]
    await app.aclose()


async def test_expired_task_is_revoked_not_run(app: App) -> None:
    ran = False

    @app.task
    async def late() -> None:
        nonlocal ran
        ran = True

    r = await late.apply_async(expires=datetime.now(UTC) - timedelta(seconds=1))
    async with app.worker():
        with pytest.raises(TaskRevokedError, match="expired"):
            await r.get(timeout=TIMEOUT)
    assert await r.state() == State.REVOKED
    assert not ran


async def test_countdown_not_before(app: App) -> None:
    @app.task
    async def stamp() -> float:
        return time.time()

    async with app.worker():
        sent = time.time()
        r = await stamp.apply_async(countdown=0.5)
        assert await r.get(timeout=TIMEOUT) >= sent + 0.5 - 0.02


async def test_unknown_task_dead_lettered_and_caller_told(app: App) -> None:
    async with app.worker():
        r = await app.send_task("tasks.nope", [1])
        with pytest.raises(NotRegistered, match=r"unknown task 'tasks\.nope'"):
            await r.get(timeout=TIMEOUT)
    dead = await app.broker.dead_letters("default")
    assert [d.id for d in dead] == [r.id]
    assert "unknown task 'tasks.nope'" in dead[0].reason


async def test_undecodable_message_dead_lettered(app: App) -> None:
    from asyncq.brokers import OutgoingMessage

    await app.connect()
    await app.broker.publish(OutgoingMessage(id="garbage-1", queue="default", body=b"\x80 not json"))
    async with app.worker():
        record = await app.backend.wait("garbage-1", timeout=TIMEOUT)
        assert record is not None
    dead = await app.broker.dead_letters("default")
    assert dead[0].id == "garbage-1" and "undecodable message" in dead[0].reason
    assert dead[0].body == b"\x80 not json"  # kept as it came: nothing is lost


async def test_acks_early_when_acks_late_false(app: App) -> None:
    running = asyncio.Event()
    release = asyncio.Event()

    @app.task(acks_late=False)
    async def early() -> None:
        running.set()
        await release.wait()

    async with app.worker():
        r = await early.enqueue()
        await asyncio.wait_for(running.wait(), TIMEOUT)
        assert await app.broker.queue_length("default") == 0
        release.set()
        await r.get(timeout=TIMEOUT)


async def test_rate_limit_spaces_starts(app: App) -> None:
    starts: list[float] = []

    @app.task(rate_limit="10/s")
    async def limited() -> None:
        starts.append(time.monotonic())

    async with app.worker(concurrency=20):
        results = [await limited.enqueue() for _ in range(5)]
        await asyncio.gather(*(r.get(timeout=TIMEOUT) for r in results))
    assert starts[-1] - starts[0] >= 0.4 - 0.02  # 5 starts at 10/s span at least 0.4 s


async def test_update_state_progress_visible(app: App) -> None:
    release = asyncio.Event()
    progressed = asyncio.Event()

    @app.task(bind=True)
    async def long(self: Any) -> str:
        await self.update_state(state="PROGRESS", meta={"done": 3, "total": 10})
        progressed.set()
        await release.wait()
        return "finished"

    @app.task(bind=True)
    def sync_progress(self: Any) -> str:
        self.update_state(state="PROGRESS", meta={"step": 1})
        return "ok"

    async with app.worker():
        r = await long.enqueue()
        await asyncio.wait_for(progressed.wait(), TIMEOUT)
        assert await r.state() == State.STARTED
        assert await r.info() == {"done": 3, "total": 10, "state": "PROGRESS"}
        release.set()
        assert await r.get(timeout=TIMEOUT) == "finished"
        assert await (await sync_progress.enqueue()).get(timeout=TIMEOUT) == "ok"


async def test_current_task_and_request_context(app: App) -> None:
    @app.task(bind=True)
    async def introspect(self: Any, x: int) -> dict[str, Any]:
        assert current_task() is self
        return {
            "id": self.request.id,
            "args": self.request.args,
            "queue": self.request.delivery_info["queue"],
            "count": self.request.delivery_info["delivery_count"],
            "eager": self.request.is_eager,
        }

    @app.task
    def in_thread() -> str | None:
        task = current_task()
        return task.request.id if task else None

    async with app.worker():
        r = await introspect.enqueue(7)
        assert await r.get(timeout=TIMEOUT) == {
            "id": r.id,
            "args": [7],
            "queue": "default",
            "count": 1,
            "eager": False,
        }
        t = await in_thread.enqueue()
        assert await t.get(timeout=TIMEOUT) == t.id
    assert current_task() is None


async def test_priorities_and_routing(app: App) -> None:
    order: list[str] = []

    @app.task
    async def record(label: str) -> None:
        order.append(label)

    @app.task(queue="special")
    async def special() -> str:
        return "special"

    app.conf.task_routes = {record.name: "routed"}
    for label, priority in (("low", 0), ("high", 9), ("mid", 5)):
        await record.apply_async((label,), priority=priority)
    s = await special.enqueue()
    async with app.worker(queues=["routed"], concurrency=1):
        deadline = time.monotonic() + TIMEOUT
        while len(order) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    assert order == ["high", "mid", "low"]
    assert await app.broker.queue_length("special") == 1
    async with app.worker(queues=["special"]):
        assert await s.get(timeout=TIMEOUT) == "special"


async def test_ignore_result_stores_nothing(app: App) -> None:
    done = asyncio.Event()

    @app.task(ignore_result=True)
    async def quiet() -> int:
        done.set()
        return 1

    async with app.worker():
        r = await quiet.enqueue()
        await asyncio.wait_for(done.wait(), TIMEOUT)
    assert await app.backend.get(r.id) is None
    assert await r.state() == State.PENDING


async def test_track_started(app: App) -> None:
    app.conf.task_track_started = True
    started = asyncio.Event()
    release = asyncio.Event()

    @app.task
    async def slow() -> None:
        started.set()
        await release.wait()

    async with app.worker():
        r = await slow.enqueue()
        await asyncio.wait_for(started.wait(), TIMEOUT)
        assert await r.state() == State.STARTED
        release.set()
        await r.get(timeout=TIMEOUT)


async def test_thousands_of_coroutines_in_flight_at_once(app: App) -> None:
    n = 2000
    gate = asyncio.Event()
    entered = 0
    all_in = asyncio.Event()

    @app.task
    async def wait_gate() -> None:
        nonlocal entered
        entered += 1
        if entered == n:
            all_in.set()
        await gate.wait()

    results = await app.send_many([wait_gate.build_message() for _ in range(n)])
    async with app.worker(concurrency=n) as worker:
        await asyncio.wait_for(all_in.wait(), TIMEOUT * 2)
        assert worker.in_flight == n  # every task is suspended inside the one loop at once
        gate.set()
        await asyncio.wait_for(asyncio.gather(*(r.get() for r in results)), TIMEOUT * 2)


async def test_graceful_shutdown_lets_tasks_finish(app: App) -> None:
    started = asyncio.Event()

    @app.task
    async def brief() -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "finished"

    worker = app.worker(shutdown_timeout=10)
    async with worker:
        r = await brief.enqueue()
        await asyncio.wait_for(started.wait(), TIMEOUT)
    assert await r.get(timeout=1) == "finished"


async def test_shutdown_timeout_requeues_unfinished(app: App) -> None:
    started = asyncio.Event()

    @app.task
    async def endless() -> None:
        started.set()
        await asyncio.sleep(3600)

    async with app.worker(shutdown_timeout=0.2):
        r = await endless.enqueue()
        await asyncio.wait_for(started.wait(), TIMEOUT)
    # Cancelled at the deadline and handed back: the message waits for the next worker.
    assert await app.broker.queue_length("default") == 1
    assert await r.state() == State.PENDING


async def test_failed_start_raises_from_async_with() -> None:
    app = App("bad", broker="nosuch://x")
    with pytest.raises(Exception, match="unknown broker scheme 'nosuch'"):
        async with app.worker():
            pass


async def test_update_state_from_a_process_task(tmp_path: Any) -> None:
    # A fresh memory app (process_tasks.app's broker is bound to another test's loop); the
    # child process imports the task by reference either way.
    app = App("progress", broker="memory://")
    task = process_tasks.report_progress
    app.tasks[task.name] = task
    release = tmp_path / "release"
    async with app.worker(process_pool_size=1):
        r = await app.send_message(task.build_message([str(release)]))

        async def progressed() -> bool:
            return await r.info() == {"done": 1, "total": 2, "state": "PROGRESS"}

        await until(progressed, timeout=30)  # a process task's progress reaches the backend
        assert await r.state() == State.STARTED
        release.touch()
        assert await r.get(timeout=30) == "finished"
        assert await r.state() == State.SUCCESS  # the last progress note did not overwrite it
