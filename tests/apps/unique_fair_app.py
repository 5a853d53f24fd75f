"""The app of the flow-control acceptance tests: a unique task and a fair one; URLs from ASYNCQ_BROKER_URL.

Each run appends a line to ``$FLOW_RECORD_FILE`` (O_APPEND: concurrent writers never
interleave a line). ``hold`` keeps the unique task running until ``$FLOW_RELEASE_FILE`` exists.
Run as a script, it enqueues ``hold(n)`` once and prints the handle's id (one producer).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from asyncq import App

app = App("flow-app")


def record(*fields: object) -> None:
    line = "\t".join(str(f) for f in (*fields, time.time(), os.getpid())) + "\n"
    fd = os.open(os.environ["FLOW_RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task(name="flow.hold", unique=True, bind=True)  # named: also run as __main__
async def hold(self: Any, n: int) -> int:
    record("start", self.request.id)
    release = Path(os.environ["FLOW_RELEASE_FILE"])
    while not release.exists():  # the test's signal to finish
        await asyncio.sleep(0.02)
    record("done", self.request.id)
    return n


@app.task(name="flow.tenant_job", fair_key="tenant")
async def tenant_job(tenant: str, i: int) -> None:
    record(tenant, i)


async def _produce(n: int) -> str:
    try:
        return (await hold.enqueue(n)).id
    finally:
        await app.aclose()


if __name__ == "__main__":
    print(asyncio.run(_produce(int(sys.argv[1]))))
