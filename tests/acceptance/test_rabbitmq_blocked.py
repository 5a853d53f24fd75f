"""A producer while RabbitMQ blocks publishers (a resource alarm): a clear error, nothing lost.

RabbitMQ stops reading a publishing connection while a memory or disk alarm is on and tells
it so (connection.blocked). The alarm is raised on a node of the test's own, by lowering its
memory watermark below what it uses; the shared server is never touched.
"""

from __future__ import annotations

import logging
import uuid

import pytest

from asyncq import App
from asyncq.backends.rpc import RPCBackend
from asyncq.exceptions import BrokerConnectionError
from tests.helpers import until
from tests.servers import RabbitNode, rabbitmq_node  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


def _set_watermark(node: RabbitNode, fraction: str) -> None:
    done = node.ctl("set_vm_memory_high_watermark", fraction)
    assert done.returncode == 0, done.stderr


def _said(caplog: pytest.LogCaptureFixture, text: str, logger: str = "asyncq._amqp.protocol") -> bool:
    return any(text in r.getMessage() for r in caplog.records if r.name == logger)


async def test_blocked_publish_names_the_alarm_and_arrives_once_it_clears(
    rabbitmq_node: RabbitNode,  # noqa: F811 - the fixture
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncq")
    queue = f"blocked-{uuid.uuid4().hex[:8]}"
    app = App("blocked", broker=f"{rabbitmq_node.url}?publish_timeout=2")

    @app.task(name="blocked.noop", queue=queue, ignore_result=True)
    async def noop() -> None:
        """Never run: the test counts the queue."""

    async with app:
        await noop.enqueue()
        _set_watermark(rabbitmq_node, "0.00001")  # below what any node uses: the alarm goes off
        try:
            with pytest.raises(BrokerConnectionError, match="blocking publishes") as raised:
                await noop.enqueue()
            # RabbitMQ's own reason, in the one-line error and in the log.
            assert "low on memory" in str(raised.value), raised.value
            assert _said(caplog, "blocked publishing on connection")
            # A worker's rpc:// record: lost after publish_timeout, one warning that says why.
            backend = RPCBackend("rpc://", broker_url=rabbitmq_node.url, publish_timeout=2)
            await backend.connect()
            try:
                await backend.set("blocked-task", b"{}", final=True, ttl=None)
            finally:
                await backend.aclose()
            assert _said(caplog, "blocking publishes on this connection (low on", "asyncq.backends.rpc")
        finally:
            _set_watermark(rabbitmq_node, "0.4")
        await until(lambda: _said(caplog, "unblocked publishing"), "connection.unblocked")
        await noop.enqueue()
        # The publish that timed out was only held back: it arrives too (the error says it may).
        await until(lambda: _count(app, queue, 3), "all three messages queued")


async def _count(app: App, queue: str, expected: int) -> bool:
    return await app.broker.queue_length(queue) == expected
