"""The command line, run as separate processes against the embedded SQLite store."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

import pytest

from tests.acceptance.conftest import ROOT, asyncq, wait_for

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


# -- the first hour: help, failures, hints ------------------------------------------------------

ONBOARDING = "tests.apps.onboarding_app:app"
COMMANDS = ["run", "beat", "enqueue", "result", "purge", "dlq", "events"]


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command, checked to be one line without a traceback."""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("Error: "), out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_has_no_type_placeholders_and_shows_defaults(
    store_env: dict[str, str], command: str | None
) -> None:
    out = asyncq(*([command] if command else []), "--help", env={**store_env, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert not re.search(r"<[a-z ]+>", text), text  # typer 0.29's <str>, <bool>, <int range>
    assert not re.search(r"\{[A-Za-z_]+\}", text), text  # and its {app_path} in the usage line
    if command is not None:
        assert "APP" in text.splitlines()[0]  # the usage line names the argument plainly
    if command == "run":
        assert "worker_concurrency setting (100)" in text
        assert "default: info" in text
        assert "--log-format FORMAT" in text
    if command in ("enqueue", "result"):
        assert "default: 60.0" in text  # --wait's timeout
        assert "Wait until" in text


@pytest.mark.parametrize("value", ["0", "-5"])
def test_concurrency_below_one_is_rejected(store_env: dict[str, str], value: str) -> None:
    out = asyncq("run", APP, "--concurrency", value, env=store_env)
    assert out.returncode == 2
    assert f"--concurrency must be at least 1, got {value}" in one_line_error(out)


def test_a_dotted_app_path_suggests_the_colon_form(store_env: dict[str, str]) -> None:
    out = asyncq("purge", "tests.apps.cli_app.app", env=store_env)
    assert out.returncode == 2
    assert "did you mean 'tests.apps.cli_app:app'?" in one_line_error(out)


def test_a_wrong_attribute_lists_the_apps_of_the_module(store_env: dict[str, str]) -> None:
    out = asyncq("purge", "tests.apps.cli_app:ap", env=store_env)
    assert out.returncode == 2
    line = one_line_error(out)
    assert "module 'tests.apps.cli_app' has no attribute 'ap'; apps in it: tests.apps.cli_app:app" in line


def test_an_error_inside_the_users_module_shows_its_file_and_line(store_env: dict[str, str]) -> None:
    out = asyncq("purge", "tests.apps.broken_app:app", env=store_env)
    assert out.returncode == 2
    line = one_line_error(out)
    assert "KeyError" in line
    assert f"{ROOT / 'tests' / 'apps' / 'broken_app.py'}:10" in line


def test_enqueue_wait_on_a_failing_task_prints_one_line_and_exits_1(
    store_env: dict[str, str], start_worker: Callable[..., Popen[str]]
) -> None:
    start_worker(ONBOARDING, env=store_env)
    out = asyncq(
        "enqueue", ONBOARDING, "tests.apps.onboarding_app.fail", "--args", '["boom"]', "--wait", env=store_env
    )
    assert out.returncode == 1, (out.stdout, out.stderr)
    line = one_line_error(out)
    assert "task tests.apps.onboarding_app.fail[" in line
    assert "failed: ValueError: boom second line of the message" in line
    assert out.stdout == ""


def test_result_exits_1_for_a_failed_task(
    store_env: dict[str, str], start_worker: Callable[..., Popen[str]]
) -> None:
    start_worker(ONBOARDING, env=store_env)
    sent = asyncq("enqueue", ONBOARDING, "tests.apps.onboarding_app.fail", "--args", '["bad"]', env=store_env)
    task_id = sent.stdout.strip()
    waited = asyncq("result", ONBOARDING, task_id, "--wait", env=store_env)
    assert waited.returncode == 1, waited.stderr
    shown = json.loads(waited.stdout)
    assert shown["state"] == "FAILURE"
    assert shown["error"] == "ValueError: bad second line of the message"
    again = asyncq("result", ONBOARDING, task_id, env=store_env)
    assert again.returncode == 1
    assert json.loads(again.stdout) == shown


def test_a_retry_shows_its_countdown(
    store_env: dict[str, str], start_worker: Callable[..., Popen[str]]
) -> None:
    start_worker(ONBOARDING, env=store_env)
    sent = asyncq("enqueue", ONBOARDING, "tests.apps.onboarding_app.retry_later", env=store_env)
    task_id = sent.stdout.strip()
    shown: dict[str, object] = {}

    def in_retry() -> bool:
        out = asyncq("result", ONBOARDING, task_id, env=store_env)
        shown.update(json.loads(out.stdout))
        return shown["state"] == "RETRY"

    wait_for(in_retry, timeout=60, what="the RETRY state")
    assert shown["retries"] == 1
    assert "result" not in shown
    assert isinstance(shown["countdown"], float) and 0 < shown["countdown"] <= 300
    assert shown["error"] == "RuntimeError: not yet"


def test_wait_times_out_by_default_saying_what_it_waited_for(store_env: dict[str, str]) -> None:
    out = asyncq(
        "enqueue",
        ONBOARDING,
        "tests.apps.onboarding_app.add",
        "--args",
        "[1, 2]",
        "--wait",
        "--timeout",
        "0.5",
        env=store_env,
    )
    assert out.returncode == 1
    line = one_line_error(out)
    assert re.search(
        r"task tests\.apps\.onboarding_app\.add\[[0-9a-f-]{36}\] did not finish within 0\.5s", line
    )
    assert f"is a worker running for {store_env['ASYNCQ_BROKER_URL']}?" in line


def test_the_worker_start_up_line_names_its_broker_and_backend(
    store_env: dict[str, str], start_worker: Callable[..., Popen[str]]
) -> None:
    worker = start_worker(ONBOARDING, env=store_env)
    expected = f"broker {store_env['ASYNCQ_BROKER_URL']}, backend {store_env['ASYNCQ_RESULT_BACKEND']}"
    log = Path(worker.log_path)  # type: ignore[attr-defined]
    wait_for(lambda: expected in log.read_text(), timeout=60, what="the start-up line")


def test_log_format_json_puts_the_task_context_in_every_record(
    store_env: dict[str, str], start_worker: Callable[..., Popen[str]]
) -> None:
    worker = start_worker(ONBOARDING, "--log-format", "json", "--queues", "chat", env=store_env)
    out = asyncq(
        "enqueue",
        ONBOARDING,
        "tests.apps.onboarding_app.chatty",
        "--args",
        '["hi"]',
        "--queue",
        "chat",
        "--wait",
        env=store_env,
    )
    assert out.returncode == 0, out.stderr
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    records = [json.loads(line) for line in Path(worker.log_path).read_text().splitlines()]  # type: ignore[attr-defined]
    said = [r for r in records if r["message"] == "saying hi"]
    assert len(said) == 1, records
    record = said[0]
    assert record["level"] == "WARNING" and record["logger"] == "tests.apps.onboarding_app"
    assert record["task_name"] == "tests.apps.onboarding_app.chatty"
    assert record["queue"] == "chat" and record["retries"] == 0
    assert record["task_id"] and record["worker"].endswith(f":{worker.pid}")
    assert any("worker" in r["message"] and "task_id" not in r for r in records)  # outside a task


def test_unknown_log_format_is_rejected(store_env: dict[str, str]) -> None:
    out = asyncq("run", APP, "--log-format", "xml", env=store_env)
    assert out.returncode == 2
    assert "unknown log format 'xml'; use text or json" in one_line_error(out)


@pytest.mark.parametrize("args", [["beat"], ["beat", "--list"], ["run", "--beat"]])
def test_beat_entries_must_name_registered_tasks(store_env: dict[str, str], args: list[str]) -> None:
    out = asyncq(args[0], "tests.apps.bad_beat_app:app", *args[1:], env=store_env)
    assert out.returncode == 2
    line = one_line_error(out)
    assert "periodic entry 'sum': task 'tests.apps.bad_beat_app.ad' is not registered" in line
    assert "did you mean 'tests.apps.bad_beat_app.add'?" in line


def test_an_unknown_asyncq_variable_is_warned_about(store_env: dict[str, str]) -> None:
    out = asyncq("purge", APP, env={**store_env, "ASYNCQ_WORKER_CONCURENCY": "5"})
    assert out.returncode == 0
    assert "ASYNCQ_WORKER_CONCURENCY is not an asyncq setting" in out.stderr
    assert "did you mean ASYNCQ_WORKER_CONCURRENCY?" in out.stderr


def test_a_relative_sqlite_path_is_the_same_store_from_any_directory(tmp_path: Path) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "tasks.py").write_text(
        "from asyncq import App\n"
        'app = App("rel", broker="sqlite:///queue.db", backend="sqlite:///queue.db")\n'
        "@app.task\n"
        "async def add(x: int, y: int) -> int:\n"
        "    return x + y\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCQ_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(project)])
    sent = subprocess.run(
        [sys.executable, "-m", "asyncq", "enqueue", "tasks:app", "tasks.add", "--args", "[1, 2]"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    assert (project / "queue.db").exists()
    assert not (elsewhere / "queue.db").exists()
    purged = subprocess.run(
        [sys.executable, "-m", "asyncq", "purge", "tasks:app"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert purged.stdout.strip() == "purged 1 message(s) from default", purged.stderr


def test_an_unguarded_script_with_process_tasks_fails_with_the_fix(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "import asyncio\n"
        "from asyncq import App\n"
        f'app = App("unguarded", broker="sqlite:///{tmp_path / "store.db"}")\n'
        '@app.task(executor="process")\n'
        "def square(x: int) -> int:\n"
        "    return x * x\n"
        "async def main() -> None:\n"
        "    async with app.worker(concurrency=1):\n"
        "        try:\n"
        "            print('RESULT', await (await square.enqueue(3)).get(timeout=60))\n"
        "        except Exception as exc:\n"
        "            print('FAILED', exc)\n"
        "asyncio.run(main())  # no __main__ guard: the spawned child runs this again\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCQ_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert "FAILED" in out.stdout, (out.stdout, out.stderr)
    assert 'must do so under `if __name__ == "__main__":`' in out.stdout
    assert "a worker was started while a process-pool child imported the main module" in out.stderr
