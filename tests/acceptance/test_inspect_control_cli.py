"""``asyncq inspect`` / ``asyncq control`` against two ``asyncq run`` processes, on every durable broker."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest

from asyncq import App, State
from tests.acceptance.conftest import asyncq, wait_for
from tests.apps import control_app
from tests.conformance.drivers_rabbitmq import rabbitmq_url  # noqa: F401 - session fixture
from tests.helpers import delete_prefix, unique_prefix
from tests.services import require_service

APP = "tests.apps.control_app:app"
# About twenty CLI processes, each a Python start: seconds apiece on a loaded 2-core machine.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCQ_")}
    base["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    base["ASYNCQ_TASK_DEFAULT_QUEUE"] = f"cli-ctl-{uuid.uuid4().hex[:10]}"
    base["ASYNCQ_RESULT_BACKEND"] = f"sqlite:///{tmp_path / 'results.db'}"
    base["ASYNCQ_WORKER_HEARTBEAT_INTERVAL"] = "0.5"
    prefix = None
    if request.param == "sqlite":
        base["ASYNCQ_BROKER_URL"] = f"sqlite:///{tmp_path / 'broker.db'}"
    elif request.param == "redis":
        prefix = unique_prefix()
        base["ASYNCQ_BROKER_URL"] = f"{require_service('redis')}?key_prefix={prefix}"
    else:
        base["ASYNCQ_BROKER_URL"] = request.getfixturevalue("rabbitmq_url")
    yield base
    if prefix is not None:
        asyncio.run(delete_prefix(require_service("redis"), prefix))


def cli_json(env: dict[str, str], *args: str) -> Any:
    done = asyncq(*args, "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def cli_json_all(env: dict[str, str], *commands: list[str]) -> list[Any]:
    """Run independent CLI commands at once (each is a process start): their JSON, in order."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda command: cli_json(env, *command), commands))


def client(env: dict[str, str]) -> App:
    return App("control-app", broker=env["ASYNCQ_BROKER_URL"], backend=env["ASYNCQ_RESULT_BACKEND"])


def enqueue(env: dict[str, str], *args: Any, countdown: float | None = None) -> str:
    app = client(env)

    async def go() -> str:
        try:
            queue = env["ASYNCQ_TASK_DEFAULT_QUEUE"]
            message = control_app.nap.build_message(args, countdown=countdown, queue=queue)
            return (await app.send_message(message)).id
        finally:
            await app.aclose()

    return asyncio.run(go())


def state_of(env: dict[str, str], task_id: str) -> State:
    app = client(env)

    async def go() -> State:
        try:
            return await app.AsyncResult(task_id).state()
        finally:
            await app.aclose()

    return asyncio.run(go())


def test_inspect_and_control_two_worker_processes(
    env: dict[str, str], start_worker: Callable[..., Popen[str]], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    workers = {
        name: start_worker(APP, "--concurrency", "2", "--hostname", name, env=env) for name in ("w1", "w2")
    }

    def both_answer() -> bool:
        return set(cli_json(env, "inspect", APP, "ping", "--timeout", "2")) == set(workers)

    wait_for(both_answer, timeout=60, what="both workers to answer pings")
    table = asyncq("inspect", APP, "ping", "--timeout", "2", env=env)
    assert table.returncode == 0 and "w1" in table.stdout and "pong" in table.stdout

    stored_presence = not env["ASYNCQ_BROKER_URL"].startswith("amqp")
    stats, registered, *listed_workers = cli_json_all(
        env,
        ["inspect", APP, "stats", "--destination", "w1", "--timeout", "5"],
        ["inspect", APP, "registered", "--timeout", "2"],
        *([["inspect", APP, "workers"]] if stored_presence else []),
    )
    assert list(stats) == ["w1"] and stats["w1"]["concurrency"] == 2
    for workers_list in listed_workers:
        listed = {w["hostname"]: w for w in workers_list}
        assert {"w1", "w2"} <= set(listed) and not listed["w1"]["is_lost"]
    assert control_app.nap.name in registered["w1"]

    running = enqueue(env, 60.0, str(marks))

    def shows_running() -> bool:
        active = cli_json(env, "inspect", APP, "active", "--timeout", "2")
        return any(t["id"] == running for tasks in active.values() for t in tasks)

    wait_for(shows_running, timeout=60, what="inspect active to show the running task")
    assert "runtime" in asyncq("inspect", APP, "active", "--timeout", "2", env=env).stdout
    revoked = cli_json(env, "control", APP, "revoke", running, "--terminate", "--timeout", "2")
    assert sum("terminated 1" in r["message"] for r in revoked.values()) == 1
    wait_for(
        lambda: state_of(env, running) == State.REVOKED, timeout=60, what="the terminated task to be REVOKED"
    )
    assert not any(p.name.startswith("done-") for p in marks.iterdir())

    # Delayed long enough for the revoke command's process to start on a loaded machine; the
    # skip (and the REVOKED record) happens when the broker delivers it at its eta.
    later = enqueue(env, 0.01, str(marks), countdown=10.0)
    cli_json(env, "control", APP, "revoke", later)

    extra = "extra-" + env["ASYNCQ_TASK_DEFAULT_QUEUE"]
    for batch in (  # independent commands at once; cancel-consumer needs add-consumer done
        [
            ["rate-limit", control_app.nap.name, "100/s"],
            ["time-limit", control_app.nap.name, "none", "50"],
            ["add-consumer", extra],
            ["pool-resize", "5"],
        ],
        [["cancel-consumer", extra]],
    ):
        to_all = [["control", APP, *c, "--destination", "w1,w2", "--timeout", "5"] for c in batch]
        for command, replies in zip(batch, cli_json_all(env, *to_all), strict=True):
            assert set(replies) == {"w1", "w2"} and all(r["ok"] for r in replies.values()), (command, replies)
    stats = cli_json(env, "inspect", APP, "stats", "--destination", "w1,w2", "--timeout", "5")
    assert {s["concurrency"] for s in stats.values()} == {5}
    # Checked after the commands above, which run while the revoked task waits for its eta.
    wait_for(lambda: state_of(env, later) == State.REVOKED, timeout=60, what="the queued task to be REVOKED")

    bad = asyncq("control", APP, "pool-resize", "many", env=env)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("Error:") and "\n" not in bad.stderr.strip()

    replies = cli_json(env, "control", APP, "shutdown", "--destination", "w1", "--timeout", "5")
    assert list(replies) == ["w1"]
    assert workers["w1"].wait(timeout=60) == 0
    assert workers["w2"].poll() is None
    if env["ASYNCQ_BROKER_URL"].startswith("amqp"):
        app = client(env)

        async def clean() -> None:
            try:
                await app.connect()
                for queue in (env["ASYNCQ_TASK_DEFAULT_QUEUE"], "extra-" + env["ASYNCQ_TASK_DEFAULT_QUEUE"]):
                    await app.broker.delete_queue(queue)  # type: ignore[attr-defined]
            finally:
                await app.aclose()

        asyncio.run(clean())
