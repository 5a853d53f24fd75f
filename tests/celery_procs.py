"""Real Celery processes for the interop tests: a producer call and a worker, as subprocesses.

Both run ``tests.apps.celery_side``'s Celery app, whose broker and result backend come from
``CELERY_INTEROP_URL`` and ``CELERY_INTEROP_BACKEND``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from asyncq import App

ROOT = Path(__file__).resolve().parents[1]
WAIT = 90.0  # seconds: generous, the machine is shared


def celery_env(broker: str, backend: str | None = None) -> dict[str, str]:
    """The environment of a Celery subprocess on ``broker`` (results: ``backend``, or the broker)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CELERY_INTEROP_URL": broker}
    if backend is not None:
        env["CELERY_INTEROP_BACKEND"] = backend
    return env


async def celery_call(broker: str, spec: dict[str, Any], *, backend: str | None = None) -> dict[str, Any]:
    """Run the Celery producer subprocess: send one task, wait for its result, return what it saw."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.apps.celery_producer",
        json.dumps(spec),
        cwd=ROOT,
        env=celery_env(broker, backend),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT + 30)
    except BaseException:  # timed out, or the test gave up on it: no producer outlives its test
        proc.kill()
        await asyncio.shield(proc.wait())
        raise
    assert proc.returncode == 0, err.decode()
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


@contextmanager
def celery_worker(
    broker: str, queue: str, log: Path, *, backend: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A Celery worker (solo pool) consuming ``queue``, stopped with SIGTERM on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.apps.celery_side:celery_app",
                "worker",
                "-Q",
                queue,
                "-P",
                "solo",
                "-n",
                f"{queue}@localhost",
                "--without-heartbeat",
                "--without-mingle",
                "--without-gossip",
                "-l",
                "warning",
            ],
            cwd=ROOT,
            env=celery_env(broker, backend),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def interop_app(celery_url: str, queue: str) -> App:
    """An asyncq app consuming the Celery queue ``queue`` on ``celery_url``, with the interop tasks."""
    app = App(
        "interop",
        broker="memory://",
        config={
            "celery_queues": [queue],
            "celery_broker_url": celery_url,
            "celery_task_map": {"legacy.multiply": "interop.mul"},
        },
    )

    @app.task(name="interop.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="interop.mul")
    async def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="interop.fail")
    async def fail(text: str) -> None:
        raise ValueError(text)

    @app.task(name="interop.context", bind=True)
    async def context(self: Any) -> dict[str, Any]:
        request = self.request
        return {
            "id": request.id,
            "root_id": request.root_id,
            "parent_id": request.parent_id,
            "retries": request.retries,
            "queue": request.delivery_info["queue"],
            "header": request.headers.get("custom"),
            "now": time.time(),
        }

    @app.task(name="interop.flaky", bind=True, max_retries=5)
    async def flaky(self: Any, until: int) -> int:
        if self.request.retries < until:
            raise self.retry(countdown=0.2)
        return int(self.request.retries)

    @app.task(name="interop.hopeless", bind=True, max_retries=1)
    async def hopeless(self: Any) -> None:
        raise self.retry(exc=LookupError("still broken"), countdown=0.1)

    @app.task(name="interop.forever")
    async def forever() -> None:
        await asyncio.Event().wait()  # until revoked with terminate

    running: dict[str, int] = {}

    @app.task(name="interop.serial", concurrency_key="tenant", max_concurrency=1)
    async def serial(tenant: str) -> int:
        """How many calls of ``tenant`` ran at once with this one (1 when the key holds)."""
        running[tenant] = running.get(tenant, 0) + 1
        try:
            peak = running[tenant]
            for _ in range(30):  # long enough for calls sent together to overlap if unlimited
                await asyncio.sleep(0.01)
                peak = max(peak, running[tenant])
            return peak
        finally:
            running[tenant] -= 1

    return app
