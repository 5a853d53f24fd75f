"""Helpers to run asyncq commands and workers as separate processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for as wait_for  # re-exported: the acceptance tests import it from here

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose app uses a fresh SQLite store (the embedded default driver)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCQ_")}
    env["ASYNCQ_BROKER_URL"] = f"sqlite:///{tmp_path / 'store.db'}?visibility_timeout=2"
    env["ASYNCQ_RESULT_BACKEND"] = f"sqlite:///{tmp_path / 'store.db'}"
    env["PYTHONPATH"] = str(ROOT)
    return env


def asyncq(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m asyncq ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "asyncq", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``asyncq run`` workers; every one still running at the end is killed."""
    started: list[subprocess.Popen[str]] = []
    logs: list[Any] = []

    def start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
        log = open(tmp_path / f"worker-{len(started)}.log", "w")  # noqa: SIM115 - closed at teardown
        logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "asyncq", "run", *args],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        proc.log_path = log.name  # type: ignore[attr-defined]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    for log in logs:
        log.close()
