"""Passwords never show: a worker, a producer and every CLI command, with a password in each URL.

A Redis with ``requirepass`` runs on its own port for this module; each command runs with the
right password, a wrong one, a wrong port, an unknown task and bad JSON, and everything they
printed, logged and stored is searched for every password. RabbitMQ is tried with a wrong password.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from redis import Redis

from tests.acceptance.conftest import asyncq, wait_for
from tests.services import missing

APP = "tests.apps.cli_app:app"
TASK = "tests.apps.cli_app.add"
PASSWORD = "Pw-r3dis-0a9f7c"
WRONG = "Pw-wr0ng-7b1e2d"
RABBIT_WRONG = "Pw-rabb1t-5c3d9e"
SIGNING_KEY = "Sk-5e9a1c7b3d2f4e6a8b0c"
ENCRYPTION_KEY = "q2A5Zb9mC1xY7wV3uT6sR0pO8nM4lK2jH5gF1dE3cB0="
SECRETS = (PASSWORD, WRONG, RABBIT_WRONG, SIGNING_KEY, ENCRYPTION_KEY)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed; this test starts its own")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis-auth")
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            PASSWORD,
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def ready() -> bool:
        try:
            return bool(Redis(port=port, password=PASSWORD, socket_timeout=1).ping())
        except Exception:
            return False

    wait_for(ready, what="the password-protected redis-server")
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def _env(base: dict[str, str], url: str) -> dict[str, str]:
    env = {**base, "ASYNCQ_BROKER_URL": url, "ASYNCQ_RESULT_BACKEND": url, "COLUMNS": "200"}
    # Keys too: signed, encrypted messages, and neither key may show anywhere.
    env |= {"ASYNCQ_SECURITY_KEY": SIGNING_KEY, "ASYNCQ_SECURITY_ENCRYPTION_KEY": ENCRYPTION_KEY}
    env["ASYNCQ_SECURITY_ENCRYPT"] = "true"
    # A worker on a refused port retries its connect once (that warning must not leak either).
    env["ASYNCQ_BROKER_CONNECTION_MAX_RETRIES"] = "1"
    if url.startswith("amqp"):
        del env["ASYNCQ_RESULT_BACKEND"]  # rpc://, over the same (refused) connection
    return env


def _leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


INSPECTIONS = ("ping", "stats", "active", "registered", "workers", "revoked")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_no_password_in_output_logs_or_stored_data(
    redis_port: int,
    store_env: dict[str, str],
    start_worker: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    good = f"redis://:{PASSWORD}@127.0.0.1:{redis_port}/0"
    # A short retry_timeout: the failures are the point, not the patience.
    wrong_password = f"redis://:{WRONG}@127.0.0.1:{redis_port}/0?retry_timeout=1"
    wrong_port = f"redis://:{PASSWORD}@127.0.0.1:{_free_port()}/0?retry_timeout=1"
    rabbit = f"amqp://guest:{RABBIT_WRONG}@127.0.0.1:5672/"
    printed: list[str] = []

    def run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
        out = asyncq(*args, env=_env(store_env, url), timeout=90)
        printed.append(f"$ asyncq {' '.join(args)} [{url.split('@')[-1]}]\n{out.stdout}\n{out.stderr}")
        return out

    worker = start_worker(APP, "--log-level", "debug", env=_env(store_env, good))
    wait_for(lambda: "consuming" in Path(worker.log_path).read_text(), what="the worker to start")
    sent = run(good, "enqueue", APP, TASK, "--args", "[1, 2]", "--wait", "--timeout", "60")
    assert sent.returncode == 0, sent.stderr
    task_id = run(good, "enqueue", APP, TASK, "--args", "[2, 2]").stdout.strip().splitlines()[-1]
    run(good, "result", APP, task_id, "--wait", "--timeout", "60")
    run(good, "enqueue", APP, "tests.apps.cli_app.no_such_task", "--args", "[1]")
    run(good, "enqueue", APP, TASK, "--args", "[1, 2")  # bad JSON
    run(good, "enqueue", APP, TASK, "--args", '["a", "b", "c"]')  # fails in the worker (TypeError)
    # The commands below are independent of each other: they run side by side, since most of
    # their time is spent waiting (for replies, or for connections that fail).
    with ThreadPoolExecutor(max_workers=8) as pool:
        inspections = [("inspect", APP, what, "--timeout", "2") for what in INSPECTIONS]
        controls = [
            ("control", APP, "revoke", "some-task-id", "--timeout", "2"),
            ("control", APP, "rate-limit", TASK, "10/s", "--timeout", "2"),
        ]
        list(pool.map(lambda args: run(good, *args), [*inspections, *controls]))
    run(good, "purge", APP)
    run(good, "beat", APP, "--list")
    run(good, "--version")
    failing = [
        (url, args)
        for url in (wrong_password, wrong_port, rabbit)
        for args in (
            ("enqueue", APP, TASK, "--args", "[1, 2]"),
            ("result", APP, "some-id"),
            ("purge", APP),
            ("run", APP),
            ("beat", APP, "--list"),
            ("inspect", APP, "ping"),
            ("control", APP, "shutdown"),
        )
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda job: (job[1], run(job[0], *job[1])), failing))
    for args, out in outcomes:
        assert out.returncode != 0 or args[0] == "beat", (args, out.stdout, out.stderr)
    # A worker and a producer of its own, with the wrong password: they must fail, quietly.
    bad_worker = start_worker(APP, env=_env(store_env, wrong_password))
    bad_worker.wait(timeout=90)
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)
    logs = "\n".join(Path(p.log_path).read_text() for p in (worker, bad_worker))  # type: ignore[attr-defined]
    everything = "\n".join(printed) + logs
    assert "Traceback" not in "\n".join(printed), "a CLI command printed a traceback"
    assert not _leaks(everything), [block for block in printed if _leaks(block)] or logs
    # What the app stored (messages, results, dead letters, tracebacks) holds no password either.
    client = Redis(port=redis_port, password=PASSWORD, socket_timeout=5)
    stored = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        value = {
            "string": lambda k: client.get(k),
            "list": lambda k: client.lrange(k, 0, -1),
            "hash": lambda k: client.hgetall(k),
            "zset": lambda k: client.zrange(k, 0, -1),
            "set": lambda k: client.smembers(k),
            "stream": lambda k: client.xrange(k),
        }.get(kind, lambda k: b"")(key)
        stored.append(repr(value))
    assert stored, "nothing was stored: the test did not exercise the broker"
    assert not _leaks("\n".join(stored))
    client.close()
