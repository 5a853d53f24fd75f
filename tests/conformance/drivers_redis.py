"""Conformance fixtures for the Redis broker and result backend: one server, Cluster, Sentinel.

Every test gets its own key prefix, so tests never see each other's queues (the Redis server
is shared); the prefix's keys are deleted afterwards.

The Cluster (3 masters, 3 replicas) and the Sentinel setup (a master, a replica, a sentinel)
are throw-away ``redis-server`` processes on free loopback ports in a temporary directory,
started once per test session by whichever test needs them first (contract or integration
tests alike: :class:`Servers` counts its users) and stopped at the end.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from asyncq.backends import ResultBackend, backend_from_url
from asyncq.backends.redis import RedisBackend
from asyncq.brokers import Broker, OutgoingMessage, broker_from_url
from asyncq.brokers.redis import RedisBroker
from tests.factories import connected
from tests.helpers import delete_prefix, unique_prefix, until, wait_for
from tests.services import missing, require_service

BrokerFactory = Callable[..., Awaitable[Broker]]
BackendFactory = Callable[..., Awaitable[ResultBackend]]

#: Seconds a Cluster node or sentinel waits before it declares a silent peer down.
NODE_TIMEOUT_MS = 1000

#: What a starting server answers before it is ready: a wait counts these as "not yet".
_NOT_YET = (redis.RedisError, OSError)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def admin(port: int) -> redis.Redis:
    """A plain synchronous client for one server or sentinel (fixtures and assertions)."""
    return redis.Redis(port=port, socket_timeout=5, decode_responses=True)


class Servers:
    """Throw-away ``redis-server`` processes in a temporary directory, shared by their users."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="asyncq-redis-"))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.users = 0
        atexit.register(self.stop)  # also when the session ends without tearing down

    def spawn(self, port: int, *args: str, conf: str | None = None) -> None:
        """Start a server (or, with ``conf``, a sentinel from that config) on ``port``."""
        command = ["redis-server"]
        if conf is not None:
            path = self.dir / f"sentinel-{port}.conf"
            path.write_text(conf)
            command += [str(path), "--sentinel"]
        command += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        command += ["--save", "", "--appendonly", "no", *args]
        self.processes[port] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: bool(admin(port).ping()), f"redis-server on port {port}", ignore=_NOT_YET)

    def kill(self, port: int) -> None:
        process = self.processes.pop(port)
        process.kill()
        process.wait()

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)
        shutil.rmtree(self.dir, ignore_errors=True)


class ClusterServers(Servers):
    """A Redis Cluster of 3 masters and 3 replicas (a replica to promote in a failover test)."""

    def start(self) -> None:
        ports = free_ports(12)
        # An explicit bus port: the default (port + 10000) may be taken, or past 65535.
        self.ports, buses = ports[:6], ports[6:]
        for port, bus in zip(self.ports, buses, strict=True):
            self.spawn(
                port,
                "--cluster-enabled", "yes",
                "--cluster-port", str(bus),
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            )  # fmt: skip
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        wait_for(self.is_ready, "the Redis Cluster to settle", ignore=_NOT_YET)
        self.url = "redis+cluster://" + ",".join(nodes[:2])

    def is_ready(self) -> bool:
        """Every node sees a healthy cluster, and every replica is in sync with its master."""
        for port in self.ports:
            client = admin(port)
            info = client.cluster("INFO")
            if info["cluster_state"] != "ok" or info["cluster_known_nodes"] != "6":
                return False
            replication = client.info("replication")
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                return False
        return True

    def masters(self) -> list[int]:
        return [port for port in self.ports if admin(port).info("replication")["role"] == "master"]

    def replica_of(self, master: int) -> int:
        """The port of ``master``'s replica."""
        for port in self.ports:
            replication = admin(port).info("replication")
            if replication["role"] == "slave" and int(replication["master_port"]) == master:
                return port
        raise LookupError(f"no replica of {master}")


class SentinelServers(Servers):
    """A master, one replica and one sentinel watching them as ``mymaster`` (quorum 1)."""

    service = "mymaster"

    def start(self) -> None:
        self.master, self.replica, self.sentinel = free_ports(3)
        self.spawn(self.master)
        self.spawn(self.replica, "--replicaof", "127.0.0.1", str(self.master))
        conf = (
            f"sentinel monitor {self.service} 127.0.0.1 {self.master} 1\n"
            f"sentinel down-after-milliseconds {self.service} {NODE_TIMEOUT_MS}\n"
            f"sentinel failover-timeout {self.service} 10000\n"
        )
        self.spawn(self.sentinel, conf=conf)
        wait_for(self.is_ready, "the sentinel to know the master and its replica", ignore=_NOT_YET)
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel}/{self.service}/0"

    def is_ready(self) -> bool:
        """The sentinel knows a healthy master and an in-sync replica it could promote."""
        sentinel = admin(self.sentinel)
        master = sentinel.sentinel_master(self.service)
        if "s_down" in master["flags"] or "o_down" in master["flags"]:
            return False
        replicas = sentinel.sentinel_slaves(self.service)
        return any(r["flags"] == "slave" and r.get("master-link-status") == "ok" for r in replicas)

    def master_port(self) -> int:
        return int(admin(self.sentinel).sentinel_get_master_addr_by_name(self.service)[1])


_shared: dict[type[Servers], Servers] = {}


def shared_servers(kind: type[ClusterServers] | type[SentinelServers]) -> Iterator[Any]:
    """Body of a session fixture: the one running instance of ``kind``, started on first use."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        missing("redis-server or redis-cli is not on PATH")
    servers = _shared.get(kind)
    if servers is None:
        servers = _shared[kind] = kind()
        try:
            servers.start()  # type: ignore[attr-defined]
        except BaseException:
            servers.stop()
            del _shared[kind]
            raise
    servers.users += 1
    try:
        yield servers
    finally:
        servers.users -= 1
        if servers.users == 0:
            servers.stop()
            del _shared[kind]


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterServers]:
    """A running 3-master, 3-replica Redis Cluster (``.url``, ``.ports``)."""
    yield from shared_servers(ClusterServers)


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelServers]:
    """A running master, replica and sentinel (``.url``, ``.master``, ``.replica``, ``.sentinel``)."""
    yield from shared_servers(SentinelServers)


@asynccontextmanager
async def broker_factory(url: str, **fixed: Any) -> AsyncIterator[BrokerFactory]:
    """Make connected brokers on ``url`` sharing one fresh key prefix; close and clean up after."""
    prefix = unique_prefix()

    async def cleanup(_: object) -> None:
        await delete_prefix(url, prefix)

    async with connected(
        lambda **options: broker_from_url(url, key_prefix=prefix, **fixed, **options), cleanup
    ) as make:
        yield make


@asynccontextmanager
async def backend_factory(url: str, **fixed: Any) -> AsyncIterator[BackendFactory]:
    """Make connected result backends on ``url`` sharing one fresh key prefix; clean up after."""
    prefix = unique_prefix()

    async def cleanup(_: object) -> None:
        await delete_prefix(url, prefix)

    async with connected(
        lambda **options: backend_from_url(url, key_prefix=prefix, **fixed, **options), cleanup
    ) as make:
        yield make


@pytest.fixture
async def redis_broker_factory() -> AsyncIterator[BrokerFactory]:
    async with broker_factory(require_service("redis")) as make:
        yield make


@pytest.fixture
async def redis_backend_factory() -> AsyncIterator[BackendFactory]:
    async with backend_factory(require_service("redis")) as make:
        yield make


# The pooled connections (a Cluster's mode, min_replicas, or multiplex=false) on one server.
@pytest.fixture
async def redis_pooled_broker_factory() -> AsyncIterator[BrokerFactory]:
    async with broker_factory(require_service("redis"), multiplex=False) as make:
        yield make


@pytest.fixture
async def redis_pooled_backend_factory() -> AsyncIterator[BackendFactory]:
    async with backend_factory(require_service("redis"), multiplex=False) as make:
        yield make


@pytest.fixture
async def redis_cluster_broker_factory(redis_cluster: ClusterServers) -> AsyncIterator[BrokerFactory]:
    async with broker_factory(redis_cluster.url) as make:
        yield make


@pytest.fixture
async def redis_cluster_backend_factory(redis_cluster: ClusterServers) -> AsyncIterator[BackendFactory]:
    async with backend_factory(redis_cluster.url) as make:
        yield make


@pytest.fixture
async def redis_sentinel_broker_factory(redis_sentinel: SentinelServers) -> AsyncIterator[BrokerFactory]:
    async with broker_factory(redis_sentinel.url) as make:
        yield make


@pytest.fixture
async def redis_sentinel_backend_factory(redis_sentinel: SentinelServers) -> AsyncIterator[BackendFactory]:
    async with backend_factory(redis_sentinel.url) as make:
        yield make


# -- shared by the Cluster and Sentinel failover tests ---------------------------------------

FAILOVER_TIMEOUT = 30.0


def _msg(queue: str) -> OutgoingMessage:
    return OutgoingMessage(id=str(uuid.uuid4()), queue=queue, body=b"x")


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = FAILOVER_TIMEOUT
) -> None:
    """:func:`tests.helpers.until` with the failover bound (kept for the contract tests)."""
    await until(predicate, "the failover condition", timeout)


async def run_through_failover(
    url: str, prefix: str, failover: Callable[[list[str]], Awaitable[None]]
) -> None:
    """Publish and consume across ``failover(queues)``: every message arrives, nobody gives up.

    Publishes go out in small concurrent bursts (group commit, as a busy producer's do);
    deliveries are acked from their own tasks (as a worker's jobs do). A result waiter
    subscribed before the failover must be woken by a result written after it.
    """
    queues = [f"q{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    producer = RedisBroker(url, key_prefix=prefix, retry_timeout=FAILOVER_TIMEOUT)
    consumer = RedisBroker(url, key_prefix=prefix, visibility_timeout=5, poll_interval=0.5)
    waiting_side = RedisBackend(url, key_prefix=prefix, retry_timeout=FAILOVER_TIMEOUT)
    writing_side = RedisBackend(url, key_prefix=prefix, retry_timeout=FAILOVER_TIMEOUT)
    sent: list[str] = []
    seen: set[str] = set()

    async def produce() -> None:
        failing_over: asyncio.Task[None] | None = None
        for burst in range(150):
            batch = [_msg(queues[(burst + i) % len(queues)]) for i in range(20)]
            await asyncio.gather(*(producer.publish(m) for m in batch))
            sent.extend(m.id for m in batch)
            if burst == 50:
                failing_over = asyncio.create_task(failover(queues), name="test.failover")
            await asyncio.sleep(0.01)
        assert failing_over is not None
        await failing_over  # published until the failover was over, and after
        for _ in range(5):
            batch = [_msg(q) for q in queues]
            await asyncio.gather(*(producer.publish(m) for m in batch))
            sent.extend(m.id for m in batch)

    async def consume() -> None:
        acks: set[asyncio.Task[None]] = set()
        async with aclosing(consumer.consume(queues, prefetch=100)) as deliveries:
            async for delivery in deliveries:
                seen.add(delivery.id)
                ack = asyncio.create_task(delivery.ack(), name="test.ack")
                acks.add(ack)
                ack.add_done_callback(acks.discard)
        await asyncio.gather(*acks, return_exceptions=True)

    async def all_seen() -> bool:
        return seen >= set(sent)

    async with producer, consumer, waiting_side, writing_side:
        result = asyncio.create_task(
            waiting_side.wait("late-result", timeout=FAILOVER_TIMEOUT), name="test.wait"
        )
        consuming = asyncio.create_task(consume(), name="test.consume")
        try:
            await asyncio.wait_for(produce(), FAILOVER_TIMEOUT * 2)
            await writing_side.set("late-result", b"after the failover", final=True, ttl=60)
            assert await result == b"after the failover"
            with contextlib.suppress(AssertionError):  # reported below, with the count
                await wait_until(all_seen)
        finally:
            consuming.cancel()
            await asyncio.gather(consuming, return_exceptions=True)
    assert len(sent) == 150 * 20 + 5 * len(queues)
    assert set(sent) <= seen, f"lost {len(set(sent) - seen)} of {len(sent)} messages"
