"""asyncq.testing: drain() over the memory broker, eager mode, and the pytest plugin's fixtures."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from asyncq import App, State, SyncResult, chain, chord, group
from asyncq.exceptions import ChordError, ConfigurationError, MaxRetriesExceededError
from asyncq.sync import close_app
from asyncq.testing import drain, memory_app, use_memory

ROOT = Path(__file__).resolve().parents[2]


class Boom(Exception):
    pass


def tasks(app: App) -> dict[str, Any]:
    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="tsum")
    async def tsum(numbers: list[int]) -> int:
        return sum(numbers)

    @app.task(name="boom")
    def boom() -> None:
        raise Boom("boom")

    @app.task(name="flaky", bind=True, max_retries=3, default_retry_delay=3600)
    def flaky(self: Any, failures: int) -> int:
        if self.request.retries < failures:
            raise self.retry()
        return int(self.request.retries)

    @app.task(name="nested")
    def nested(x: int) -> int:
        return int(add.delay(x, 1).get(timeout=10))

    @app.task(name="again", bind=True)
    async def again(self: Any) -> None:
        await self.apply_async(countdown=0)

    return {"add": add, "tsum": tsum, "boom": boom, "flaky": flaky, "nested": nested, "again": again}


# -- drain ------------------------------------------------------------------------------------------


async def test_drain_runs_tasks_and_what_they_start() -> None:
    app = memory_app()
    t = tasks(app)
    single = await t["add"].enqueue(1, 2)
    steps = await chain(t["add"].s(1, 1), t["add"].s(10)).enqueue()
    joined = await chord((t["add"].s(i, i) for i in range(4)), t["tsum"].s()).enqueue()
    failing = await t["boom"].enqueue()
    outcomes = await drain(app)
    by_id = {o.id: o for o in outcomes}
    assert by_id[single.id].result == 3 and by_id[single.id].successful
    assert by_id[steps.id].result == 12
    assert by_id[joined.id].result == 12 and by_id[joined.id].task == "tsum"
    assert by_id[failing.id].state == State.FAILURE and isinstance(by_id[failing.id].exception, Boom)
    assert len(outcomes) == 1 + 2 + 5 + 1
    assert await joined.get(timeout=1) == 12
    assert await drain(app) == []
    await app.aclose()


async def test_drain_skips_countdowns_and_retry_delays_unless_told_not_to() -> None:
    app = memory_app()
    t = tasks(app)
    later = await t["add"].apply_async((2, 2), countdown=3600)
    assert await drain(app, advance=False) == []
    assert await drain(app, advance=60) == []
    [outcome] = await drain(app, advance=7200)
    assert (outcome.id, outcome.result) == (later.id, 4)
    retried = await t["flaky"].enqueue(2)
    [outcome] = await drain(app)
    assert (outcome.id, outcome.result, outcome.runs) == (retried.id, 2, 3)
    await app.aclose()


async def test_drain_gives_up_on_a_task_that_never_stops() -> None:
    app = memory_app()
    t = tasks(app)
    await t["again"].enqueue()
    with pytest.raises(ConfigurationError, match="retrying or re-enqueueing itself forever"):
        await drain(app, limit=20)
    await app.aclose()


async def test_drain_needs_the_memory_broker_and_use_memory_gives_it(tmp_path: Path) -> None:
    app = App("real", broker=f"sqlite:///{tmp_path / 'q.db'}")
    t = tasks(app)
    with pytest.raises(ConfigurationError, match=r"memory://.*use_memory"):
        await drain(app)
    await app.aclose()
    with use_memory(app):
        result = await t["add"].enqueue(5, 5)
        assert [o.result for o in await drain(app)] == [10]
        assert await result.get(timeout=1) == 10
        await app.aclose()
    assert app.broker_url.startswith("sqlite:")


# -- eager mode -------------------------------------------------------------------------------------


def test_eager_tasks_and_canvases_run_inline_in_sync_code() -> None:
    app = memory_app(task_always_eager=True)
    t = tasks(app)
    assert t["add"].delay(1, 2).get() == 3
    assert t["add"].apply_async((1, 2), countdown=3600).get() == 3
    assert chain(t["add"].s(1, 1), t["add"].s(10)).delay().get() == 12
    assert group(t["add"].s(i, i) for i in range(3)).delay().get() == [0, 2, 4]
    assert chord((t["add"].s(i, i) for i in range(4)), t["tsum"].s()).delay().get() == 12
    assert t["nested"].delay(5).get() == 6  # a sync task sending another, as on a worker
    assert t["flaky"].delay(2).get() == 2
    failed = t["boom"].delay()
    assert (failed.state, failed.failed(), failed.ready()) == (State.FAILURE, True, True)
    with pytest.raises(Boom):
        failed.get()
    with pytest.raises(MaxRetriesExceededError):
        t["flaky"].delay(5).get()
    with pytest.raises(ChordError):
        chord([t["boom"].s()], t["tsum"].s()).delay().get()
    with pytest.raises(Boom):
        chain(t["boom"].si(), t["add"].s(1)).delay().get()


def test_eager_links_run_after_the_task() -> None:
    app = memory_app(task_always_eager=True)
    seen: list[Any] = []

    @app.task(name="record")
    def record(*args: Any) -> None:
        seen.append(args)

    t = tasks(app)
    t["add"].apply_async((1, 1), link=record.s())
    failed = t["boom"].apply_async(link_error=record.s())
    assert seen[0] == (2,)
    assert seen[1][0] == failed.id and seen[1][1]["type"].endswith("Boom")


async def test_apply_runs_the_task_here_without_eager_mode() -> None:
    app = memory_app()
    t = tasks(app)
    assert await asyncio.to_thread(lambda: t["add"].apply((1, 2)).get()) == 3
    assert await (await t["flaky"].apply((1,))).get() == 1
    assert await app.purge() == 0  # nothing was sent
    await app.aclose()


def test_eager_propagates_raises_at_send_time() -> None:
    app = memory_app(task_always_eager=True, task_eager_propagates=True)
    t = tasks(app)
    with pytest.raises(Boom):
        t["boom"].delay()
    assert t["add"].delay(2, 2).get() == 4


async def test_eager_in_async_code_runs_when_awaited() -> None:
    app = memory_app(task_always_eager=True)
    t = tasks(app)
    result = await t["add"].apply_async((3, 4))
    assert await result.get() == 7
    assert await (await t["tsum"].enqueue([1, 2])) == 3
    assert await chain(t["add"].s(1, 1), t["add"].s(2)) == 4
    assert await group(t["add"].s(1, 1), t["add"].s(2, 2)) == [2, 4]
    assert await (await group(t["add"].s(1, 1)).apply_async()).completed_count() == 1


# -- the pytest plugin ------------------------------------------------------------------------------

USER_TESTS = textwrap.dedent(
    """
    import asyncio
    import pytest
    from asyncq.testing import drain

    @pytest.fixture
    def asyncq_config():
        return {"task_default_queue": "mine"}

    def make_tasks(app):
        @app.task(name="double")
        def double(x):
            return 2 * x
        return double

    async def test_queued_then_drained(asyncq_app):
        double = make_tasks(asyncq_app)
        result = await double.enqueue(21)
        [outcome] = await drain(asyncq_app, queues=["mine"])
        assert outcome.result == 42 and await result.get(timeout=1) == 42

    async def test_worker(asyncq_app, asyncq_worker):
        double = make_tasks(asyncq_app)
        assert await (await double.enqueue(2)).get(timeout=10) == 4

    async def test_sync_code_with_the_worker(asyncq_app, asyncq_worker):
        double = make_tasks(asyncq_app)
        assert await asyncio.to_thread(lambda: double.delay(5).get(timeout=10)) == 10

    def test_eager(asyncq_eager_app):
        double = make_tasks(asyncq_eager_app)
        assert double.delay(4).get() == 8
    """
)


@pytest.mark.slow
def test_the_pytest_plugin_provides_the_fixtures(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    # The plugin loads through its pytest11 entry point, as in a user's project.
    argv = [sys.executable, "-m", "pytest", "-q"]
    argv += ["-p", "no:cacheprovider"]
    argv += ["-o", "asyncio_mode=auto", "--rootdir", str(tmp_path), str(tmp_path)]
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert "4 passed" in out.stdout, out.stdout + out.stderr


async def test_sync_code_under_test_then_drain() -> None:
    """A Django-style view (sync, in a thread) sends; the test drains and reads the result."""
    app = memory_app()
    t = tasks(app)

    def view() -> str:
        return t["add"].delay(20, 22).id

    task_id = await asyncio.to_thread(view)
    [outcome] = await drain(app)
    assert (outcome.id, outcome.result) == (task_id, 42)
    assert await asyncio.to_thread(lambda: SyncResult(app.AsyncResult(task_id)).get(timeout=5)) == 42
    await asyncio.to_thread(close_app, app)
    await app.aclose()
