"""``asyncq dashboard``: serves the dashboard, and refuses a non-loopback address without a login."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import ROOT, asyncq
from tests.dashboard_support import APP, free_port

pytest.importorskip("starlette")


def test_it_refuses_a_public_address_without_credentials(store_env: dict[str, str]) -> None:
    done = asyncq("dashboard", APP, "--host", "0.0.0.0", env=store_env)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a login" in lines[0] and "ASYNCQ_DASHBOARD_TOKEN" in lines[0]


def test_it_serves_the_dashboard(store_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    env = {**store_env, "ASYNCQ_DASHBOARD_HISTORY_PATH": str(tmp_path / "history.sqlite3")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncq", "dashboard", APP, "--port", str(port), "--log-level", "warning"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/tasks", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    output = proc.stdout.read().decode() if proc.stdout else ""
                    pytest.fail(f"the dashboard did not start: {output}")
                time.sleep(0.1)
        assert response.status_code == 200
        assert "Tasks" in response.text
    finally:
        proc.terminate()
        proc.wait(15)
        if proc.stdout:
            proc.stdout.close()
