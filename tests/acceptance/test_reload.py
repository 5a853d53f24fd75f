"""``asyncq run --reload``: a code change restarts the worker, after its in-flight task finished."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from asyncq import App
from tests.acceptance.conftest import ROOT, wait_for

pytestmark = pytest.mark.slow

TASKS = """
import os
import time
from pathlib import Path

from asyncq import App

app = App("reloading", broker="sqlite:///{db}", backend="sqlite:///{db}")


@app.task(name="version")
def version() -> list[int]:
    return [{version}, os.getpid()]


@app.task(name="slow")
def slow(marker: str) -> int:
    time.sleep(2)
    Path(marker).write_text("finished")
    return os.getpid()
"""


def _write(directory: Path, db: Path, version: int) -> None:
    (directory / "reload_tasks.py").write_text(textwrap.dedent(TASKS.format(db=db, version=version)))


async def _call(db: Path, name: str, *args: str) -> object:
    producer = App("producer", broker=f"sqlite:///{db}", backend=f"sqlite:///{db}")
    try:
        result = await producer.send_task(name, args)
        return await result.get(timeout=30)
    finally:
        await producer.aclose()


def test_a_code_change_restarts_the_worker_after_its_in_flight_task(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    _write(tmp_path, db, version=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCQ_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    log = tmp_path / "reloader.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "asyncq", "run", "reload_tasks:app", "--reload", "--concurrency", "4"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            first, old_pid = asyncio.run(_call(db, "version"))  # type: ignore[misc]
            assert first == 1

            async def slow_then_change() -> object:
                producer = App("producer", broker=f"sqlite:///{db}", backend=f"sqlite:///{db}")
                try:
                    marker = tmp_path / "marker"
                    started = await producer.send_task("slow", (str(marker),))
                    await asyncio.sleep(0.5)  # let the worker take it before the code changes
                    _write(tmp_path, db, version=2)
                    return await started.get(timeout=60)
                finally:
                    await producer.aclose()

            # The worker that had it in flight finished it: SIGTERM let it run to the end.
            assert asyncio.run(slow_then_change()) == old_pid
            assert (tmp_path / "marker").read_text() == "finished"
            wait_for(lambda: "restarting the worker" in log.read_text(), timeout=60, what="the reload")

            def new_code_runs() -> bool:
                answer = asyncio.run(_call(db, "version"))
                return answer == [2, answer[1]] and answer[1] != old_pid  # type: ignore[index]

            wait_for(new_code_runs, timeout=60, what="the new code to answer")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
