"""Presence, inspect / control and revoke end to end: two workers of one app, on every driver."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from asyncq import App, State, chain, chord, current_task, group
from asyncq.brokers.control import control_channel_for
from asyncq.exceptions import ChordError, ConfigurationError, TaskRevokedError, TimeLimitExceeded
from tests.conformance.drivers_rabbitmq import rabbitmq_url  # noqa: F401 - session fixture
from tests.helpers import delete_prefix, unique_prefix, until
from tests.services import require_service

TIMEOUT = 15.0


@pytest.fixture(
    params=[
        pytest.param("memory"),
        pytest.param("sqlite"),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[App]:
    backend = f"sqlite:///{tmp_path / 'results.db'}"
    prefix = None
    if request.param == "memory":
        broker = backend = "memory://"
    elif request.param == "sqlite":
        broker = f"sqlite:///{tmp_path / 'store.db'}"
    elif request.param == "redis":
        prefix = unique_prefix()
        broker = f"{require_service('redis')}?key_prefix={prefix}"
    else:
        broker = request.getfixturevalue("rabbitmq_url")
    config = {
        "task_default_queue": f"ctl-{uuid.uuid4().hex[:10]}",
        "worker_heartbeat_interval": 0.2,
        "task_default_retry_delay": 0.05,
    }
    app = App("ctl", broker=broker, backend=backend, config=config)
    yield app
    await app.aclose()
    if prefix is not None:
        await delete_prefix(require_service("redis"), prefix)


async def answering(app: App, *names: str) -> None:
    """Wait until every named worker answers pings (its listener is subscribed)."""

    async def all_answer() -> bool:
        replies = await app.control.ping(destination=list(names), timeout=1.0)
        return set(replies) == set(names)

    await until(all_answer, f"workers {names} to answer")


async def test_presence_lists_workers_with_stats_and_forgets_them_on_exit(app: App) -> None:
    async with app.worker(hostname="w1", concurrency=3), app.worker(hostname="w2", concurrency=4):

        async def both_listed() -> bool:
            return {s.hostname for s in await app.control.workers()} >= {"w1", "w2"}

        await until(both_listed, "both workers' heartbeats")
        statuses = {s.hostname: s for s in await app.control.workers()}
        assert statuses["w1"].stats.concurrency == 3 and statuses["w2"].stats.concurrency == 4
        assert not statuses["w1"].is_lost
        assert statuses["w1"].stats.queues == [app.conf.task_default_queue]
        assert statuses["w1"].stats.rss_bytes > 0 and statuses["w1"].stats.pid > 0
    assert {"w1", "w2"}.isdisjoint(s.hostname for s in await app.control.workers())


async def test_a_worker_that_misses_its_heartbeats_is_shown_lost(app: App) -> None:
    if app.broker_url.startswith("amqp"):
        pytest.skip("RabbitMQ gathers presence from live workers: a lost one is absent, not listed")
    await app.connect()
    channel = control_channel_for(app.broker)
    await channel.connect()
    try:
        info = b'{"hostname": "gone", "pid": 1, "version": "0", "started": 0}'
        await channel.beat("gone", info, ttl=0.1)

        async def lost() -> bool:
            return any(s.hostname == "gone" and s.is_lost for s in await app.control.workers())

        await until(lost, "the silent worker to count as lost")
        await channel.leave("gone")
    finally:
        await channel.aclose()


async def test_ping_and_destination(app: App) -> None:
    async with app.worker(hostname="w1"), app.worker(hostname="w2"):
        await answering(app, "w1", "w2")
        only = await app.control.ping(destination=["w2"], timeout=2.0)
        assert list(only) == ["w2"] and only["w2"].ok and only["w2"].message == "pong"


async def test_a_broadcast_to_every_worker_returns_once_each_live_one_answered(app: App) -> None:
    if app.broker_url.startswith("amqp"):
        pytest.skip("RabbitMQ stores no presence: a broadcast to every worker waits its timeout")
    await app.connect()
    channel = control_channel_for(app.broker)
    await channel.connect()
    info = b'{"hostname": "gone", "pid": 1, "version": "0", "started": 0}'
    try:
        async with app.worker(hostname="w1"), app.worker(hostname="w2"):
            await answering(app, "w1", "w2")
            await channel.beat("gone", info, ttl=0.01)  # a lost worker is not waited for

            async def gone_lost() -> bool:
                return any(s.hostname == "gone" and s.is_lost for s in await app.control.workers())

            await until(gone_lost, "the silent worker to count as lost")
            async with asyncio.timeout(TIMEOUT):  # far below the broadcast's own timeout
                replies = await app.control.ping(timeout=TIMEOUT * 4)
            assert set(replies) == {"w1", "w2"}
            # A live record whose worker never answers: the timeout stays the upper bound.
            await channel.beat("silent", info, ttl=TIMEOUT * 4)
            replies = await app.control.ping(timeout=0.5)
            assert set(replies) == {"w1", "w2"}
    finally:
        for name in ("gone", "silent"):
            await channel.leave(name)
        await channel.aclose()


async def test_inspect_active_reserved_registered_stats_queues(app: App) -> None:
    release = asyncio.Event()

    @app.task
    async def hold(n: int) -> int:
        await release.wait()
        return n

    async with app.worker(hostname="w1", concurrency=1, prefetch=2):
        await answering(app, "w1")
        first = await hold.enqueue(1)
        second = await hold.enqueue(2)
        inspect = app.control.inspect(destination=["w1"], timeout=2.0)

        async def both_taken() -> bool:
            active, reserved = await inspect.active(), await inspect.reserved()
            return [t.id for t in active.get("w1", [])] == [first.id] and [
                t.id for t in reserved.get("w1", [])
            ] == [second.id]

        await until(both_taken, "one task running and one prefetched")
        (running,) = (await inspect.active())["w1"]
        assert running.name == hold.name and running.args == [1] and running.runtime >= 0
        assert hold.name in (await inspect.registered())["w1"]
        stats = (await inspect.stats())["w1"]
        assert stats.in_flight == 2 and stats.concurrency == 1
        assert [q.name for q in (await inspect.active_queues())["w1"]] == [app.conf.task_default_queue]
        assert (await inspect.scheduled())["w1"] == []
        release.set()
        assert await first.get(timeout=TIMEOUT) == 1 and await second.get(timeout=TIMEOUT) == 2
        assert (await inspect.stats())["w1"].succeeded == 2


async def test_rate_limit_and_time_limit_change_at_runtime(app: App) -> None:
    @app.task
    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    async with app.worker(hostname="w1"):
        await answering(app, "w1")
        replies = await app.control.time_limit(nap.name, None, 0.2, destination=["w1"], timeout=2.0)
        assert replies["w1"].ok, replies
        with pytest.raises(TimeLimitExceeded):
            await (await nap.enqueue(5.0)).get(timeout=TIMEOUT)
        replies = await app.control.rate_limit(nap.name, "50/s", destination=["w1"], timeout=2.0)
        assert replies["w1"].ok and app.tasks[nap.name].rate == 50.0
        bad = await app.control.rate_limit("no.such.task", "1/s", destination=["w1"], timeout=2.0)
        assert not bad["w1"].ok and "unknown task" in bad["w1"].message


async def test_add_and_cancel_consumer_and_pool_resize(app: App) -> None:
    extra = f"extra-{uuid.uuid4().hex[:8]}"

    @app.task
    async def where() -> str:
        task = current_task()
        assert task is not None
        return str(task.request.delivery_info["queue"])

    async with app.worker(hostname="w1"):
        await answering(app, "w1")
        assert (await app.control.add_consumer(extra, destination=["w1"], timeout=2.0))["w1"].ok
        assert await (await where.apply_async(queue=extra)).get(timeout=TIMEOUT) == extra
        assert (await app.control.cancel_consumer(extra, destination=["w1"], timeout=2.0))["w1"].ok
        queues = (await app.control.inspect(["w1"], timeout=2.0).active_queues())["w1"]
        assert [q.name for q in queues] == [app.conf.task_default_queue]
        assert (await app.control.pool_resize(7, destination=["w1"], timeout=2.0))["w1"].ok
        assert (await app.control.inspect(["w1"], timeout=2.0).stats())["w1"].concurrency == 7
        with pytest.raises(ConfigurationError):
            await app.control.pool_resize(0)
    if app.broker_url.startswith("amqp"):
        await app.connect()
        await app.broker.delete_queue(extra)  # type: ignore[attr-defined]


async def test_shutdown_stops_the_named_worker_only(app: App) -> None:
    w1, w2 = app.worker(hostname="w1"), app.worker(hostname="w2")
    async with w1, w2:
        await answering(app, "w1", "w2")
        replies = await app.control.shutdown(destination=["w1"], timeout=2.0)
        assert replies["w1"].ok
        assert w1._main is not None
        await asyncio.wait_for(asyncio.shield(w1._main), TIMEOUT)
        assert w2.ready.is_set()


# -- revoke ------------------------------------------------------------------------------------


async def test_revoke_before_start_skips_the_task_and_fails_its_workflow(app: App) -> None:
    ran: list[str] = []
    errbacks: list[str] = []

    @app.task
    async def step(x: int) -> int:
        ran.append(f"step{x}")
        return x

    @app.task
    async def on_error(task_id: str, *args: Any) -> None:
        errbacks.append(task_id)

    @app.task
    async def total(values: list[int]) -> int:
        return sum(values)

    queued = await step.apply_async((1,), countdown=1.0)
    await queued.revoke()
    linked = await step.apply_async((2,), countdown=1.0, link_error=on_error.s())
    await linked.revoke()
    flow = await chain(step.s(3), step.s()).apply_async(countdown=1.0)
    await flow.revoke()
    header = [step.s(4), step.s(5)]
    joined = await chord(header, total.s()).apply_async()
    async with app.worker(hostname="w1"):
        with pytest.raises(TaskRevokedError):
            await queued.get(timeout=TIMEOUT)
        assert await queued.state() == State.REVOKED
        with pytest.raises(TaskRevokedError):
            await linked.get(timeout=TIMEOUT)
        await until(lambda: _true(bool(errbacks)), "link_error of the revoked task")
        assert errbacks == [linked.id]
        with pytest.raises(TaskRevokedError):
            await flow.get(timeout=TIMEOUT)
        assert await joined.get(timeout=TIMEOUT) == 9  # not revoked: runs
    assert "step1" not in ran and "step2" not in ran and "step3" not in ran


async def _true(value: bool) -> bool:
    return value


async def test_revoking_a_chord_member_fails_the_callback_with_chord_error(app: App) -> None:
    @app.task
    async def num(x: int) -> int:
        return x

    @app.task
    async def total(values: list[int]) -> int:
        return sum(values)

    members = [num.s(1).set(countdown=1.0), num.s(2).set(countdown=1.0)]
    joined = await chord(members, total.s()).apply_async()
    assert joined.parent is not None
    member_ids = [r.id for r in joined.parent.results]  # type: ignore[attr-defined]
    await app.control.revoke(member_ids[0])
    async with app.worker(hostname="w1"):
        with pytest.raises(ChordError, match=member_ids[0]):
            await joined.get(timeout=TIMEOUT)


async def test_revoking_a_group_result_revokes_every_member(app: App) -> None:
    @app.task
    async def num(x: int) -> int:
        return x

    result = await group(num.s(i).set(countdown=1.0) for i in range(3)).apply_async()
    await result.revoke()
    async with app.worker(hostname="w1"):
        for member in result.results:
            with pytest.raises(TaskRevokedError):
                await member.get(timeout=TIMEOUT)


async def test_revoke_terminate_cancels_a_running_async_task(app: App) -> None:
    started, cleaned = asyncio.Event(), asyncio.Event()

    @app.task
    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.set()

    async with app.worker(hostname="w1"), app.worker(hostname="w2"):
        await answering(app, "w1", "w2")
        result = await forever.enqueue()
        await asyncio.wait_for(started.wait(), TIMEOUT)
        await result.revoke(terminate=True)
        await asyncio.wait_for(cleaned.wait(), TIMEOUT)
        with pytest.raises(TaskRevokedError):
            await result.get(timeout=TIMEOUT)


async def test_revoke_terminate_flags_a_running_thread_task(app: App) -> None:
    started = threading.Event()
    saw_flag = threading.Event()

    @app.task(bind=True)
    def polite(self: Any) -> str:
        started.set()
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.is_revoked():
                saw_flag.set()
                return "stopped"
            time.sleep(0.01)
        return "ran out"

    async with app.worker(hostname="w1"):
        await answering(app, "w1")
        result = await polite.enqueue()
        await asyncio.to_thread(started.wait, TIMEOUT)
        replies = await app.control.revoke(result.id, terminate=True, reply=True, timeout=2.0)
        assert "terminated 1" in replies["w1"].message
        assert await asyncio.to_thread(saw_flag.wait, TIMEOUT)
        with pytest.raises(TaskRevokedError):
            await result.get(timeout=TIMEOUT)


async def test_a_worker_started_after_the_revoke_honours_it(app: App) -> None:
    @app.task
    async def num(x: int) -> int:
        return x

    result = await num.enqueue(1)
    await app.control.revoke(result.id)  # no worker is listening: only the stored revocation tells
    async with app.worker(hostname="late"):
        with pytest.raises(TaskRevokedError):
            await result.get(timeout=TIMEOUT)
        revoked = await app.control.inspect(["late"], timeout=2.0).revoked()
        assert result.id in revoked["late"]


async def test_revoke_terminate_kills_a_process_task_and_replaces_the_child(tmp_path: Path) -> None:
    from tests.apps import revoke_process_app as tasks

    app = tasks.app
    pid_file = tmp_path / "child.pid"
    try:
        async with app.worker(hostname="w1", process_pool_size=1):
            result = await tasks.spin.enqueue(str(pid_file))
            await until(lambda: _true(pid_file.exists() and bool(pid_file.read_text())), "the child to start")
            child = int(pid_file.read_text())
            await result.revoke(terminate=True)
            with pytest.raises(TaskRevokedError):
                await result.get(timeout=TIMEOUT)

            async def child_gone() -> bool:
                try:
                    os.kill(child, 0)
                except ProcessLookupError:
                    return True
                return False

            await until(child_gone, "the killed child to be gone")
            assert await (await tasks.pid.enqueue()).get(timeout=30) != child
    finally:
        await app.aclose()
