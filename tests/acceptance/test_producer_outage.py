"""Producers during a broker outage: they ride through a restart, and they always exit.

Every server here is private to the test (its own RabbitMQ node or redis-server on free
ports), stopped and started again mid-run; the shared servers are never touched.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from asyncq import App
from asyncq.backends.rpc import RPCBackend
from tests.acceptance.conftest import ROOT, wait_for
from tests.acceptance.test_connect_deadlines import SilentServer
from tests.acceptance.test_connection_loss import RedisServer, redis_server  # noqa: F401 - fixture
from tests.servers import RabbitNode, rabbitmq_node  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


async def produce_through(app: App, queue: str, restart: Callable[[], None]) -> tuple[int, int]:
    """Enqueue in a loop while ``restart`` runs in a thread; (sent before, sent after) it returns."""

    @app.task(name="outage.noop", queue=queue)
    async def noop() -> None:
        """Never run."""

    restarted = threading.Event()
    sent = before = 0

    def run_restart() -> None:
        try:
            restart()
        finally:
            restarted.set()

    async with app:
        for _ in range(20):  # connected and flowing before the outage
            await noop.apply_async()
        thread = threading.Thread(target=run_restart, daemon=True)
        thread.start()
        while not restarted.is_set():
            await noop.apply_async()  # must not raise: the outage is shorter than publish_timeout
            sent += 1
            await asyncio.sleep(0.02)
        before = sent
        for _ in range(20):
            await noop.apply_async()
            sent += 1
        thread.join(timeout=5)
        length = await app.broker.queue_length(queue)
    assert length >= 20 + sent, f"only {length} of {20 + sent} confirmed messages are in {queue}"
    return before, sent - before


@pytest.mark.rabbitmq
async def test_rabbitmq_producer_rides_through_a_broker_restart(rabbitmq_node: RabbitNode) -> None:  # noqa: F811
    def restart() -> None:
        rabbitmq_node.stop()
        rabbitmq_node.start()

    app = App("outage", broker=rabbitmq_node.url, backend="rpc://")
    app.conf.broker_transport_options = {"publish_timeout": 60}
    app.conf.result_backend_transport_options = {"publish_timeout": 60}
    queue = f"outage-{uuid.uuid4().hex[:8]}"
    _, after = await produce_through(app, queue, restart)
    assert after == 20


@pytest.mark.redis
async def test_redis_producer_rides_through_a_server_restart(redis_server: RedisServer) -> None:  # noqa: F811
    def restart() -> None:
        redis_server.stop()
        time.sleep(1.0)  # an outage, not a blip
        redis_server.start()

    app = App("outage", broker=redis_server.url, backend=redis_server.url)
    queue = f"outage-{uuid.uuid4().hex[:8]}"
    _, after = await produce_through(app, queue, restart)
    assert after == 20


@pytest.mark.rabbitmq
@pytest.mark.parametrize("closes", [False, True], ids=["without-closing", "closing"])
def test_producer_whose_send_failed_during_a_reconnect_exits(
    rabbitmq_node: RabbitNode,  # noqa: F811
    tmp_path: Path,
    closes: bool,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCQ_")}
    env.update(
        PYTHONPATH=str(ROOT),
        ASYNCQ_BROKER_URL=rabbitmq_node.url,
        ASYNCQ_RESULT_BACKEND="rpc://",
        ASYNCQ_TASK_DEFAULT_QUEUE=f"exit-{uuid.uuid4().hex[:8]}",
        ASYNCQ_BROKER_TRANSPORT_OPTIONS='{"publish_timeout": 2}',
        ASYNCQ_RESULT_BACKEND_TRANSPORT_OPTIONS='{"publish_timeout": 2}',
    )
    out_path = tmp_path / "producer.out"
    with open(out_path, "w") as out:
        producer = subprocess.Popen(
            [sys.executable, "-m", "tests.apps.outage_producer", *(["--close"] if closes else [])],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "sent 3" in out_path.read_text(), timeout=60, what="the producer to send")
        rabbitmq_node.stop()
        # Something that accepts and never answers takes the node's port: each reconnect
        # attempt then hangs in the handshake, where aio-pika used to swallow the cancellation.
        silent = _bind_silent(rabbitmq_node.port)
        try:
            wait_for(lambda: "failed:" in out_path.read_text(), timeout=60, what="the send to fail")
            wait_for(lambda: producer.poll() is not None, timeout=30, what="the producer to exit")
        finally:
            silent.close()
    finally:
        if producer.poll() is None:
            producer.kill()
        producer.wait(timeout=10)
    assert producer.returncode == 0, out_path.read_text()
    assert ("app closed by the producer" in out_path.read_text()) is closes


def _bind_silent(port: int) -> SilentServer:
    deadline = time.monotonic() + 30
    while True:
        try:
            return SilentServer(port)
        except OSError:  # the node's socket may linger for a moment
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.rabbitmq
async def test_rpc_result_lost_in_an_outage_is_one_warning_line(
    rabbitmq_node: RabbitNode,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = RPCBackend("rpc://", broker_url=rabbitmq_node.url, publish_timeout=1)
    await backend.connect()
    try:
        await asyncio.to_thread(rabbitmq_node.stop)
        with caplog.at_level(logging.WARNING):
            await backend.set("lost-task", b"{}", final=True, ttl=None)
        ours = [r for r in caplog.records if r.name.startswith("asyncq")]
        assert [(r.levelno, r.exc_info) for r in ours] == [(logging.WARNING, None)], ours
        assert ours[0].getMessage().startswith("rpc:// result of task lost-task lost: ")
    finally:
        await backend.aclose()
