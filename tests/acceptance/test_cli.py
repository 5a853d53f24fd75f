"""The command line, run as separate processes against the embedded SQLite store."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from subprocess import Popen

import pytest

from tests.acceptance.conftest import asyncq

APP = "tests.apps.cli_app:app"


def test_version(store_env: dict[str, str]) -> None:
    out = asyncq("--version", env=store_env)
    assert out.returncode == 0
    assert out.stdout.startswith("asyncq ")


def test_worker_runs_task_enqueued_by_another_process(
    store_env: dict[str, str], start_worker: Callable[..., Popen[str]]
) -> None:
    worker = start_worker(APP, "--concurrency", "10", env=store_env)
    out = asyncq(
        "enqueue",
        APP,
        "tests.apps.cli_app.add",
        "--args",
        "[4, 4]",
        "--wait",
        "--timeout",
        "30",
        env=store_env,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == 8
    sent = asyncq("enqueue", APP, "tests.apps.cli_app.add", "--args", "[1, 2]", env=store_env)
    task_id = sent.stdout.strip()
    shown = asyncq("result", APP, task_id, "--wait", "--timeout", "30", env=store_env)
    assert json.loads(shown.stdout) == {"id": task_id, "state": "SUCCESS", "result": 3}
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0


def test_purge(store_env: dict[str, str]) -> None:
    for _ in range(3):
        assert (
            asyncq("enqueue", APP, "tests.apps.cli_app.add", "--args", "[1, 1]", env=store_env).returncode
            == 0
        )
    out = asyncq("purge", APP, env=store_env)
    assert out.returncode == 0
    assert out.stdout.strip() == "purged 3 message(s) from default"


@pytest.mark.parametrize(
    ("args", "env_extra", "message"),
    [
        (["run", "no_colon"], {}, "is not an app path"),
        (["run", "tests.apps.nowhere:app"], {}, "cannot import 'tests.apps.nowhere:app'"),
        (["run", "tests.apps.cli_app:add"], {}, "not an asyncq App"),
        (["enqueue", APP, "tests.apps.cli_app.nope"], {}, "unknown task 'tests.apps.cli_app.nope'"),
        (["enqueue", APP, "tests.apps.cli_app.add", "--args", "[1,"], {}, "--args is not valid JSON"),
        (["enqueue", APP, "tests.apps.cli_app.add", "--kwargs", "[1]"], {}, "--kwargs must be a JSON object"),
        (
            ["enqueue", APP, "tests.apps.cli_app.add"],
            {"ASYNCQ_BROKER_URL": "reddis://x"},
            "unknown broker scheme",
        ),
        (["enqueue", APP, "tests.apps.cli_app.add"], {"ASYNCQ_BROKER_URL": "not a url"}, "is not a URL"),
        (["run", APP, "--loop", "trio"], {}, "unknown event loop 'trio'"),
        (["run", APP, "--log-level", "loud"], {}, "unknown log level 'loud'"),
    ],
)
def test_user_errors_are_one_line_exit_2(
    store_env: dict[str, str], args: list[str], env_extra: dict[str, str], message: str
) -> None:
    out = asyncq(*args, env={**store_env, **env_extra})
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("Error: ") and message in lines[0]
    assert "Traceback" not in out.stderr
