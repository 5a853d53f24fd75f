"""Crash recovery through worker presence, with real ``asyncq run`` processes.

A SIGKILLed worker's tasks are finished by another worker within seconds (not after the
30 s visibility timeout); a worker paused with SIGSTOP for less than the visibility timeout
keeps its tasks, and finishes them after SIGCONT, each run exactly once. Heartbeats come every
half second, so a worker counts as lost after 1.5 s (three missed beats).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import Popen

import pytest

from asyncq import App
from asyncq.control import WorkerStatus
from tests.acceptance.conftest import wait_for
from tests.apps import control_app
from tests.conformance.drivers_postgres import postgres_url  # noqa: F401 - fixture
from tests.helpers import delete_prefix, unique_prefix
from tests.services import require_service

APP = "tests.apps.control_app:app"
TASKS = 3
#: Well below the default 30 s visibility timeout: recovery came from presence, not the lease.
RECOVERY_BOUND = 20.0
HEARTBEAT = 0.5


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Workers' environment: default visibility timeout (30 s), heartbeats every ``HEARTBEAT`` s."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCQ_")}
    base["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    base["ASYNCQ_TASK_DEFAULT_QUEUE"] = f"presence-{uuid.uuid4().hex[:10]}"
    base["ASYNCQ_RESULT_BACKEND"] = f"sqlite:///{tmp_path / 'results.db'}"
    base["ASYNCQ_WORKER_HEARTBEAT_INTERVAL"] = str(HEARTBEAT)
    prefix = None
    if request.param == "sqlite":
        base["ASYNCQ_BROKER_URL"] = f"sqlite:///{tmp_path / 'broker.db'}"
    elif request.param == "postgres":
        base["ASYNCQ_BROKER_URL"] = request.getfixturevalue("postgres_url")
    else:
        prefix = unique_prefix()
        base["ASYNCQ_BROKER_URL"] = f"{require_service('redis')}?key_prefix={prefix}"
    yield base
    if prefix is not None:
        asyncio.run(delete_prefix(require_service("redis"), prefix))


def markers(directory: Path, kind: str) -> list[tuple[str, int, int]]:
    """(task id, delivery count, pid) of each ``kind`` marker."""
    found = []
    for path in directory.iterdir():
        name = path.name
        if name.startswith(kind + "-"):
            rest = name[len(kind) + 1 :]
            task_id, count, pid = rest.rsplit("-", 2)
            found.append((task_id, int(count), int(pid)))
    return found


def send(env: dict[str, str], task: object, *args: object) -> list[str]:
    app = App("control-app", broker=env["ASYNCQ_BROKER_URL"], backend=env["ASYNCQ_RESULT_BACKEND"])
    queue = env["ASYNCQ_TASK_DEFAULT_QUEUE"]

    async def go() -> list[str]:
        try:
            messages = [task.build_message(args, queue=queue) for _ in range(TASKS)]  # type: ignore[attr-defined]
            return [r.id for r in await app.send_many(messages)]
        finally:
            await app.aclose()

    return asyncio.run(go())


def presence(env: dict[str, str]) -> dict[str, WorkerStatus]:
    """The presence records, live and lost, by worker."""
    app = App("control-app", broker=env["ASYNCQ_BROKER_URL"], backend=env["ASYNCQ_RESULT_BACKEND"])

    async def go() -> dict[str, WorkerStatus]:
        try:
            return {s.hostname: s for s in await app.control.workers()}
        finally:
            await app.aclose()

    return asyncio.run(go())


def visible_workers(env: dict[str, str]) -> set[str]:
    return {name for name, status in presence(env).items() if not status.is_lost}


def judged(env: dict[str, str], watcher: str, instant: float, passes: int) -> Callable[[], bool]:
    """A predicate: ``watcher`` has looked for dead workers ``passes`` times since ``instant``.

    A worker looks right after each heartbeat and heartbeats only after that look is done, so
    ``passes + 1`` distinct heartbeats stored after ``instant`` prove ``passes`` complete looks.
    """
    seen: set[float] = set()

    def predicate() -> bool:
        status = presence(env).get(watcher)
        if status is not None and status.seen > instant:
            seen.add(status.seen)
        return len(seen) > passes

    return predicate


def start(start_worker: Callable[..., Popen[str]], env: dict[str, str], name: str) -> Popen[str]:
    proc = start_worker(APP, "--concurrency", str(TASKS), env={**env, "ASYNCQ_WORKER_HOSTNAME": name})
    wait_for(lambda: name in visible_workers(env), timeout=60, what=f"worker {name} to heartbeat")
    return proc


def test_sigkill_another_worker_finishes_the_tasks_within_seconds(
    env: dict[str, str], start_worker: Callable[..., Popen[str]], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    first = start(start_worker, env, "first")
    ids = send(env, control_app.sticky, str(marks))
    wait_for(
        lambda: len(markers(marks, "start")) == TASKS, timeout=60, what="the first worker to take every task"
    )
    start(start_worker, env, "second")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    killed_at = time.monotonic()
    wait_for(
        lambda: len(markers(marks, "done")) == TASKS, timeout=RECOVERY_BOUND, what="the tasks to be finished"
    )
    elapsed = time.monotonic() - killed_at
    done = markers(marks, "done")
    assert sorted(t for t, _, _ in done) == sorted(ids)
    assert all(count == 2 and pid != first.pid for _, count, pid in done)
    scheme = env["ASYNCQ_BROKER_URL"].split(":")[0]
    print(f"\n{scheme}: the killed worker's tasks finished {elapsed:.1f}s after the kill")


def test_sigstop_keeps_the_tasks_and_sigcont_finishes_them_once(
    env: dict[str, str], start_worker: Callable[..., Popen[str]], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    first = start(start_worker, env, "first")
    ids = send(env, control_app.nap, 3.0, str(marks))
    wait_for(
        lambda: len(markers(marks, "start")) == TASKS, timeout=60, what="the first worker to take every task"
    )
    second = start(start_worker, env, "second")
    os.kill(first.pid, signal.SIGSTOP)
    try:
        # The pause under test: longer than three missed heartbeats, shorter than the lease;
        # it lasts until the second worker has twice looked for dead workers with the first lost.
        wait_for(lambda: presence(env)["first"].is_lost, timeout=60, what="the pause to be seen")
        lost_at = presence(env)["first"].expires
        wait_for(judged(env, "second", lost_at, 2), timeout=60, what="the paused worker judged")
        assert second.poll() is None
        assert len(markers(marks, "start")) == TASKS, "a paused worker's task was started elsewhere"
    finally:
        os.kill(first.pid, signal.SIGCONT)
    wait_for(lambda: len(markers(marks, "done")) == TASKS, timeout=60, what="the resumed worker to finish")
    starts, done = markers(marks, "start"), markers(marks, "done")
    assert sorted(t for t, _, _ in done) == sorted(ids)
    assert len(starts) == TASKS and all(pid == first.pid for _, _, pid in starts + done)
