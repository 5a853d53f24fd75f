"""``asyncq run -E`` sends events; ``asyncq events`` prints them (here from the kept history)."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from subprocess import Popen

from tests.acceptance.conftest import asyncq

APP = "tests.apps.cli_app:app"


def test_worker_events_are_tailed_as_json_and_as_a_table(
    store_env: dict[str, str], start_worker: Callable[..., Popen[str]]
) -> None:
    env = {**store_env, "ASYNCQ_EVENT_HEARTBEAT_INTERVAL": "600"}
    worker = start_worker(APP, "-E", env=env)
    sent = asyncq(
        "enqueue",
        APP,
        "tests.apps.cli_app.add",
        "--args",
        "[2, 3]",
        "--wait",
        "--timeout",
        "30",
        env={**env, "ASYNCQ_TASK_SEND_SENT_EVENT": "1"},
    )
    assert json.loads(sent.stdout) == 5, sent.stderr
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0

    out = asyncq("events", APP, "--history", "--json", "--count", "6", env=env)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(e["type"] for e in events) == sorted(
        ["worker-online", "task-sent", "task-received", "task-started", "task-succeeded", "worker-offline"]
    )
    task_ids = {e["uuid"] for e in events if e["type"].startswith("task-")}
    assert len(task_ids) == 1
    assert all(e["name"] == "tests.apps.cli_app.add" for e in events if e["type"].startswith("task-"))

    table = asyncq("events", APP, "--history", "--count", "6", env=env)
    lines = table.stdout.splitlines()
    assert len(lines) == 6
    succeeded = next(line for line in lines if "task-succeeded" in line)
    assert "tests.apps.cli_app.add[" in succeeded and " in " in succeeded
