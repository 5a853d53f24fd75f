"""Crash and shutdown recovery with real worker processes on the embedded SQLite store."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

from asyncq import App
from tests.acceptance.conftest import wait_for
from tests.apps import cli_app

APP = "tests.apps.cli_app:app"


def app_for(env: dict[str, str]) -> App:
    """A producer app on the workers' store (the test process does not see their environment)."""
    return App("cli-app", broker=env["ASYNCQ_BROKER_URL"], backend=env["ASYNCQ_RESULT_BACKEND"])


async def send_slow(app: App, seconds: float, marks: Path) -> str:
    result = await app.send_message(cli_app.slow.build_message((seconds, str(marks))))
    return result.id


def markers(directory: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(prefix))


def test_sigkilled_worker_task_runs_again_on_new_worker(
    store_env: dict[str, str], start_worker: Callable[..., Popen[str]], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    app = app_for(store_env)

    async def send() -> str:
        task_id = await send_slow(app, 1.0, marks)
        await app.aclose()
        return task_id

    task_id = asyncio.run(send())
    first = start_worker(APP, env=store_env)
    wait_for(lambda: bool(markers(marks, "start-")), what="the first worker to start the task")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    assert markers(marks, "done-") == []

    second = start_worker(APP, env=store_env)

    async def result() -> int:
        try:
            return int(await app.AsyncResult(task_id).get(timeout=60))
        finally:
            await app.aclose()

    # visibility_timeout=2: the dead worker's claim lapses and the task is delivered again.
    assert asyncio.run(result()) == 2
    starts = markers(marks, "start-")
    assert [name.split("-")[-2] for name in starts] == ["1", "2"]  # delivery counts 1 then 2
    # The second delivery is a suspect: it ran in the second worker's sandbox child process.
    (done,) = markers(marks, "done-")
    assert done.startswith(f"done-{task_id}-") and int(done.rsplit("-", 1)[1]) not in (first.pid, second.pid)


def test_sigterm_lets_in_flight_tasks_finish(
    store_env: dict[str, str], start_worker: Callable[..., Popen[str]], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    app = app_for(store_env)
    n = 20

    async def send() -> list[str]:
        ids = [await send_slow(app, 1.0, marks) for _ in range(n)]
        await app.aclose()
        return ids

    ids = asyncio.run(send())
    worker = start_worker(APP, "--concurrency", str(n), "--shutdown-timeout", "20", env=store_env)
    wait_for(lambda: len(markers(marks, "start-")) == n, what="all tasks to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert len(markers(marks, "done-")) == n

    async def states() -> set[str]:
        try:
            return {str(await app.AsyncResult(i).state()) for i in ids}
        finally:
            await app.aclose()

    assert asyncio.run(states()) == {"SUCCESS"}


def test_sigterm_past_deadline_requeues_then_new_worker_finishes(
    store_env: dict[str, str], start_worker: Callable[..., Popen[str]], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    app = app_for(store_env)
    n = 10

    async def send() -> list[str]:
        ids = [await send_slow(app, 30.0 if i % 2 else 0.5, marks) for i in range(n)]
        await app.aclose()
        return ids

    ids = asyncio.run(send())
    first = start_worker(APP, "--concurrency", str(n), "--shutdown-timeout", "1", env=store_env)
    wait_for(lambda: len(markers(marks, "start-")) == n, what="all tasks to start")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    # The short tasks finished; the long ones were cancelled and returned to the queue.
    assert len(markers(marks, "done-")) == n // 2

    async def requeued() -> int:
        try:
            await app.connect()
            return await app.broker.queue_length("default")
        finally:
            await app.aclose()

    assert asyncio.run(requeued()) == n // 2
    # The next worker gets the requeued tasks (each would take 30 s: seeing them start is enough).
    second = start_worker(APP, "--concurrency", str(n), "--shutdown-timeout", "0.5", env=store_env)
    wait_for(lambda: len(markers(marks, "start-")) == n + n // 2, what="the requeued tasks to start again")
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0
    assert len(ids) == n


def test_second_signal_stops_at_once(
    store_env: dict[str, str], start_worker: Callable[..., Popen[str]], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    app = app_for(store_env)

    async def send() -> None:
        await send_slow(app, 30.0, marks)
        await app.aclose()

    asyncio.run(send())
    worker = start_worker(APP, "--shutdown-timeout", "60", env=store_env)
    wait_for(lambda: bool(markers(marks, "start-")), what="the task to start")
    worker.send_signal(signal.SIGTERM)
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=15) == 0
