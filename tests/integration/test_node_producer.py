"""A Node.js producer enqueues asyncq tasks on RabbitMQ and Redis from docs/protocol.md alone.

The producer (tests/apps/node_producer.mjs) uses npm's ``amqplib`` and ``redis``, installed
once by the machine's npm into a cache directory, and no asyncq code: it writes the envelope,
calls the Lua publish script copied from the page, and waits for the result record.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from asyncq import App
from tests.helpers import delete_prefix, unique_prefix
from tests.services import missing, require_service

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "apps" / "node_producer.mjs"
DOC = ROOT / "docs" / "protocol.md"
PACKAGES = ("amqplib@0.10", "redis@4")
WAIT = 60.0


@pytest.fixture(scope="module")
def node_deps() -> Path:
    """A directory whose node_modules holds the producer's packages (installed on first use)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing("node and npm are needed for the Node.js producer test")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "asyncq-tests" / "node"
    if not all((cache / "node_modules" / name.split("@")[0] / "package.json").exists() for name in PACKAGES):
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(cache), *PACKAGES],
            capture_output=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            missing(f"npm could not install {' '.join(PACKAGES)}: {done.stderr.decode()[-500:]}")
    return cache


@pytest.fixture
def queue() -> str:
    return f"node-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis_url() -> AsyncIterator[tuple[str, str]]:
    """The Redis URL (db 0) and a key prefix of this test's own; its keys are deleted after."""
    url = require_service("redis")
    prefix = unique_prefix()
    yield url, prefix
    await delete_prefix(url, prefix)


def make_app(broker: str, results: str) -> App:
    app = App("node-interop", broker=broker, backend=results)

    @app.task(name="node.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="node.fail")
    async def fail(text: str) -> None:
        raise ValueError(text)

    return app


async def node_call(deps: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Run the Node.js producer; return the task id and the result record it read."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(SCRIPT),
        json.dumps({"doc": str(DOC), **spec}),
        env={**os.environ, "NODE_DEPS": str(deps)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    except BaseException:  # no producer outlives its test
        proc.kill()
        await asyncio.shield(proc.wait())
        raise
    assert proc.returncode == 0, err.decode()
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


async def round_trips(app: App, deps: Path, spec: dict[str, Any]) -> None:
    async with app.worker(queues=[spec["queue"]]):
        added = await node_call(deps, {**spec, "task": "node.add", "args": [2, 3]})
        failed = await node_call(deps, {**spec, "task": "node.fail", "args": ["from node"]})
    assert added["record"]["status"] == "SUCCESS" and added["record"]["result"] == 5
    assert added["record"]["task_id"] == added["id"]
    assert await app.AsyncResult(added["id"]).get(timeout=WAIT) == 5
    record = failed["record"]
    assert record["status"] == "FAILURE" and record["exc_type"] == "builtins.ValueError"
    assert "from node" in record["exc_message"] and "ValueError: from node" in record["traceback"]


@pytest.mark.redis
async def test_node_producer_on_redis(node_deps: Path, queue: str, redis_url: tuple[str, str]) -> None:
    url, prefix = redis_url
    app = make_app(f"{url}?key_prefix={prefix}", f"{url}?key_prefix={prefix}")
    spec = {"broker": "redis", "redis_url": url, "prefix": prefix, "results_prefix": prefix, "queue": queue}
    await round_trips(app, node_deps, spec)
    await app.aclose()


@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_node_producer_on_rabbitmq(node_deps: Path, queue: str, redis_url: tuple[str, str]) -> None:
    aio_pika = pytest.importorskip("aio_pika")
    amqp_url = require_service("rabbitmq")
    url, prefix = redis_url
    app = make_app(amqp_url, f"{url}?key_prefix={prefix}")
    spec = {
        "broker": "amqp",
        "broker_url": amqp_url,
        "redis_url": url,
        "results_prefix": prefix,
        "queue": queue,
    }
    try:
        await round_trips(app, node_deps, spec)
    finally:
        await app.aclose()
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel()
            for name in (queue, f"{queue}.dead"):
                await channel.queue_delete(name)
