"""A private RabbitMQ node for tests that stop or restart the server (never the shared one).

The node has its own name, AMQP and distribution ports, data and log directories (under a
temporary directory the ``rabbitmq`` user can write: the server script drops root to it) and
no plugins, so it never collides with the shared node. Starting takes 5-10 s; stopping and
starting again keeps its durable queues.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import missing

START_TIMEOUT = 90.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RabbitMQNode:
    """One rabbitmq-server on free ports; :meth:`stop` and :meth:`start` may be called repeatedly."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="asyncq-rabbit-"))
        self.directory.chmod(0o755)
        for name in ("mnesia", "log"):
            (self.directory / name).mkdir()
        (self.directory / "enabled_plugins").write_text("[].\n")
        (self.directory / "rabbitmq.conf").write_text("loopback_users = none\n")
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                user = pwd.getpwnam("rabbitmq")
                for path in (self.directory, *self.directory.rglob("*")):
                    os.chown(path, user.pw_uid, user.pw_gid)
        self.node = f"asyncqtest{uuid.uuid4().hex[:8]}@localhost"
        self.port = _free_port()
        self.dist_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(self.directory / "feature_flags"),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(self.directory / "pid"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self) -> None:
        """Start the node and wait until it accepts AMQP connections."""
        log = open(self.directory / "server.out", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            ["rabbitmq-server"], env=self._env, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.directory / "server.out").read_text(errors="replace")[-2000:]
                self.stop()
                pytest.fail(f"private RabbitMQ node did not start:\n{tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the node (data kept) and wait until its process is gone."""
        subprocess.run(
            ["rabbitmqctl", "-n", self.node, "stop"], env=self._env, capture_output=True, timeout=60
        )
        if self.proc is not None:
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return sock.recv(1) == b"\x01"  # the first frame of Connection.Start
        except OSError:
            return False

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def rabbitmq_node() -> Iterator[RabbitMQNode]:
    """A started private RabbitMQ node, stopped and removed after the test."""
    if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
        missing("rabbitmq-server is not installed")
    node = RabbitMQNode()
    try:
        node.start()
        yield node
    finally:
        node.remove()
