"""A wrong or dead broker address fails within ``broker_connection_timeout``, in one line.

The CLI runs as subprocesses against a port where something else listens (the Redis port
for an amqp:// URL), a closed port, and a server that accepts and never speaks; a worker
stuck connecting stops on SIGTERM.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import Popen

import pytest

from tests.acceptance.conftest import asyncq, wait_for
from tests.servers import RedisServer, free_port
from tests.services import require_service

APP = "tests.apps.cli_app:app"
ADD = "tests.apps.cli_app.add"
#: Generous for a loaded machine: the deadline is 2 s; without it these commands hung forever.
EXIT_WITHIN = 40


class SilentServer:
    """Accepts TCP connections on ``port`` (default: a free one) and never sends a byte."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.port = int(self.sock.getsockname()[1])
        self.accepted = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._held.append(conn)
            self.accepted.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def env_for(store_env: dict[str, str], broker_url: str, timeout: float = 2) -> dict[str, str]:
    env = dict(store_env)
    env["ASYNCQ_BROKER_URL"] = broker_url
    env["ASYNCQ_BROKER_CONNECTION_TIMEOUT"] = str(timeout)
    return env


def error_line(output: str) -> str:
    """The one ``Error:`` line of a command's output."""
    lines = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, output
    return lines[0]


def only_line(stderr: str) -> str:
    """The error of a command whose whole stderr must be that one line."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0]


def test_enqueue_to_amqp_url_on_the_redis_port_fails_naming_what_answered(store_env: dict[str, str]) -> None:
    redis_port = require_service("redis").split(":")[-1].split("/")[0]
    url = f"amqp://guest:s3cret@127.0.0.1:{redis_port}/"
    out = asyncq("enqueue", APP, ADD, "--args", "[1, 2]", env=env_for(store_env, url), timeout=EXIT_WITHIN)
    assert out.returncode == 2
    line = only_line(out.stderr)
    assert line.startswith(f"Error: no AMQP server answered at 127.0.0.1:{redis_port} within 2s: ")
    assert 'it speaks something else (got b"-ERR' in line
    assert "amqp://guest:***@" in line and "s3cret" not in out.stderr


def test_enqueue_to_a_closed_amqp_port_says_connection_refused(store_env: dict[str, str]) -> None:
    port = free_port()
    url = f"amqp://guest:s3cret@127.0.0.1:{port}/"
    out = asyncq("enqueue", APP, ADD, env=env_for(store_env, url), timeout=EXIT_WITHIN)
    assert out.returncode == 2
    line = only_line(out.stderr)
    assert f"127.0.0.1:{port}: connection refused" in line
    assert "s3cret" not in out.stderr


def test_enqueue_to_a_silent_amqp_server_fails_within_the_deadline(
    store_env: dict[str, str], silent_server: SilentServer
) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{silent_server.port}/"
    out = asyncq("enqueue", APP, ADD, env=env_for(store_env, url), timeout=EXIT_WITHIN)
    assert out.returncode == 2
    line = only_line(out.stderr)
    assert f"no AMQP server answered at 127.0.0.1:{silent_server.port} within 2s" in line
    assert "accepted the connection but sent nothing back" in line


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_enqueue_to_unreachable_redis_fails_in_about_the_deadline(
    store_env: dict[str, str], silent_server: SilentServer, kind: str
) -> None:
    port = free_port() if kind == "refused" else silent_server.port
    url = f"redis://:s3cret@127.0.0.1:{port}/0"
    out = asyncq("enqueue", APP, ADD, env=env_for(store_env, url), timeout=EXIT_WITHIN)
    assert out.returncode == 2
    line = only_line(out.stderr)
    assert f"connect to redis://:***@127.0.0.1:{port}/0" in line
    assert "is Redis running there" in line
    assert "s3cret" not in out.stderr


def test_worker_with_amqp_url_on_the_redis_port_exits_with_the_message(
    store_env: dict[str, str], start_worker: Callable[..., Popen[str]]
) -> None:
    redis_port = require_service("redis").split(":")[-1].split("/")[0]
    url = f"amqp://guest:guest@127.0.0.1:{redis_port}/"
    worker = start_worker(APP, env=env_for(store_env, url))
    assert worker.wait(timeout=EXIT_WITHIN) == 2
    log = Path(worker.log_path).read_text()  # type: ignore[attr-defined]
    assert f"no AMQP server answered at 127.0.0.1:{redis_port} within 2s" in error_line(log)


@pytest.mark.parametrize("signals", [1, 2])
def test_worker_stuck_connecting_stops_on_sigterm(
    store_env: dict[str, str],
    start_worker: Callable[..., Popen[str]],
    silent_server: SilentServer,
    signals: int,
) -> None:
    # A deadline far beyond the test's patience: only the signal can end the connect.
    url = f"amqp://guest:guest@127.0.0.1:{silent_server.port}/"
    worker = start_worker(APP, env=env_for(store_env, url, timeout=600))
    assert silent_server.accepted.wait(timeout=EXIT_WITHIN), "the worker never connected"
    for _ in range(signals):
        worker.send_signal(signal.SIGTERM)
    wait_for(lambda: worker.poll() is not None, timeout=EXIT_WITHIN, what="the worker to exit")
    log = Path(worker.log_path).read_text()  # type: ignore[attr-defined]
    assert "SIGTERM received" in log
    assert worker.returncode == 0, log


def test_second_sigterm_stops_a_worker_whose_sync_task_blocks_its_thread(
    store_env: dict[str, str], start_worker: Callable[..., Popen[str]], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    app = "tests.apps.stuck_app:app"
    sent = asyncq("enqueue", app, "tests.apps.stuck_app.stuck", "--args", f'["{marks}"]', env=store_env)
    assert sent.returncode == 0, sent.stderr
    worker = start_worker(app, "--shutdown-timeout", "600", env=store_env)
    wait_for(lambda: (marks / "started").exists(), timeout=EXIT_WITHIN, what="the task to start")
    worker.send_signal(signal.SIGTERM)
    log_path = Path(worker.log_path)  # type: ignore[attr-defined]
    wait_for(
        lambda: "stopping gracefully" in log_path.read_text(), timeout=EXIT_WITHIN, what="the first signal"
    )
    worker.send_signal(signal.SIGTERM)
    wait_for(lambda: worker.poll() is not None, timeout=EXIT_WITHIN, what="the worker to exit")
    assert "stopping now" in log_path.read_text()


@pytest.mark.parametrize(
    ("scheme", "path", "says"),
    [
        (
            "redis+sentinel",
            "/mymaster",
            "no sentinel at 127.0.0.1:{port} gave the address of master 'mymaster'",
        ),
        ("redis+cluster", "", "connect to redis+cluster://127.0.0.1:{port}"),
    ],
)
def test_enqueue_to_unreachable_sentinels_or_cluster_fails_in_one_line(
    store_env: dict[str, str], scheme: str, path: str, says: str
) -> None:
    port = free_port()
    out = asyncq("enqueue", APP, ADD, env=env_for(store_env, f"{scheme}://127.0.0.1:{port}{path}"))
    assert out.returncode == 2
    assert says.format(port=port) in only_line(out.stderr)


# -- a worker started before its broker (broker_connection_retry_on_startup) -------------------


def _log_of(worker: Popen[str]) -> str:
    return Path(worker.log_path).read_text()  # type: ignore[attr-defined]


def test_worker_started_before_its_broker_waits_for_it_then_runs_tasks(
    store_env: dict[str, str], start_worker: Callable[..., Popen[str]], tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=False)  # its port is chosen, not served yet
    env = env_for(store_env, server.url)
    worker = start_worker(APP, env=env)
    try:
        wait_for(lambda: "trying again in 1s (retry 1 of 100)" in _log_of(worker), "a retry", EXIT_WITHIN)
        assert worker.poll() is None, _log_of(worker)
        assert "Redis is unreachable (ConnectionRefusedError" in _log_of(worker)
        server.start()
        out = asyncq("enqueue", APP, ADD, "--args", "[2, 3]", "--wait", env=env, timeout=EXIT_WITHIN)
        assert out.returncode == 0, out.stderr + _log_of(worker)
        assert out.stdout.strip().splitlines()[-1] == "5"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=EXIT_WITHIN) == 0, _log_of(worker)
    finally:
        server.stop()


def test_worker_waiting_to_retry_its_connect_stops_on_sigterm(
    store_env: dict[str, str], start_worker: Callable[..., Popen[str]]
) -> None:
    env = env_for(store_env, f"redis://127.0.0.1:{free_port()}/0")
    worker = start_worker(APP, env=env)
    wait_for(lambda: "(retry 1 of 100)" in _log_of(worker), "a retry", EXIT_WITHIN)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=EXIT_WITHIN) == 0, _log_of(worker)
    assert "stopped before it connected" in _log_of(worker)


def test_start_up_retries_can_be_turned_off_or_bounded(
    store_env: dict[str, str], start_worker: Callable[..., Popen[str]]
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    off = start_worker(
        APP, env={**env_for(store_env, url), "ASYNCQ_BROKER_CONNECTION_RETRY_ON_STARTUP": "false"}
    )
    assert off.wait(timeout=EXIT_WITHIN) == 2
    assert "Redis is unreachable" in error_line(_log_of(off)) and "trying again" not in _log_of(off)
    bounded = start_worker(APP, env={**env_for(store_env, url), "ASYNCQ_BROKER_CONNECTION_MAX_RETRIES": "1"})
    assert bounded.wait(timeout=EXIT_WITHIN) == 2
    log = _log_of(bounded)
    assert "(retry 1 of 1)" in log and "(retry 2" not in log and "Redis is unreachable" in error_line(log)
