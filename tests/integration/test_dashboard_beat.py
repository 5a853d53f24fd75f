"""Disabling and enabling a beat entry from the dashboard's API, honoured by running beat processes.

Two ``asyncq beat`` processes and a worker share Redis; the worker appends every tick it runs to a
file, so a tick sent while disabled, or sent twice, shows there.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.apps import dashboard_app
from tests.dashboard_support import APP, ROOT, client_app, redis_env, serve, start_worker
from tests.helpers import delete_prefix, unique_prefix, wait_for
from tests.services import require_service

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

PERIOD = 0.3


def start_beat(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "asyncq", "beat", APP],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def ticks(record: Path, entry: str) -> list[datetime]:
    if not record.exists():
        return []
    lines = [line.split("\t") for line in record.read_text().splitlines()]
    return [datetime.fromisoformat(tick) for name, tick, _ in lines if name == entry]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    redis = require_service("redis")
    prefix = unique_prefix()
    env = redis_env(redis, prefix, tmp_path)
    env.update(ASYNCQ_BEAT_REFRESH_INTERVAL="0.2", BEAT_RECORD_FILE=str(tmp_path / "ticks.tsv"))
    yield env
    asyncio.run(delete_prefix(redis, prefix))


def test_a_disabled_entry_is_not_sent_by_running_beats_until_enabled(
    env: dict[str, str], tmp_path: Path
) -> None:
    record = tmp_path / "ticks.tsv"
    app = client_app(env)

    async def add() -> None:
        try:
            for name in ("tick-a", "tick-b"):
                await app.schedule.add(name, dashboard_app.record, PERIOD, options={"expires": 60})
        finally:
            await app.aclose()

    asyncio.run(add())
    processes = [start_worker(env, tmp_path / "worker.log", "--concurrency", "4")]
    beat_logs = [tmp_path / f"beat{n}.log" for n in range(2)]
    processes += [start_beat(env, log) for log in beat_logs]
    try:
        with (
            serve(client_app(env), history_path=tmp_path / "history.sqlite3") as url,
            httpx.Client(base_url=url, timeout=10) as http,
        ):
            headers = {"X-CSRF-Token": http.get("/api/csrf").json()["csrf"]}
            wait_for(lambda: len(ticks(record, "tick-a")) >= 2, "tick-a to run", timeout=60)

            disabled = http.post("/api/scheduled/tick-a/disable", headers=headers)
            assert disabled.status_code == 200, disabled.text
            listed = {e["name"]: e for e in http.get("/api/scheduled").json()}
            assert listed["tick-a"]["enabled"] is False and listed["tick-a"]["next"] == []
            assert listed["tick-b"]["enabled"] is True
            # Each beat logs when its next refresh drops the entry; after that it cannot send it.
            wait_for(
                lambda: all("'tick-a' disabled" in log.read_text() for log in beat_logs),
                "both beats to drop tick-a",
            )
            dropped = datetime.now().astimezone()
            # The beats go on: tick-b runs three more ticks meanwhile.
            wait_for(lambda: sum(tick > dropped for tick in ticks(record, "tick-b")) >= 3, "tick-b to go on")
            assert not [tick for tick in ticks(record, "tick-a") if tick > dropped]

            enabled = http.post("/api/scheduled/tick-a/enable", headers=headers)
            assert enabled.status_code == 200, enabled.text
            assert http.post("/api/scheduled/nothing/enable", headers=headers).status_code == 404
            wait_for(lambda: any(tick > dropped for tick in ticks(record, "tick-a")), "tick-a to resume")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(15)
    # Exactly once: no tick of either entry ran twice, across both beats.
    lines = record.read_text().splitlines()
    assert len(lines) == len(set(lines)) == len({tuple(line.split("\t")[:2]) for line in lines})
