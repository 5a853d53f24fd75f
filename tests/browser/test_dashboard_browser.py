"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright, real workers on Redis.

Screenshots go to ASYNCQ_TEST_SCREENSHOT_DIR when set (docs/images holds the current ones),
else to the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.apps import dashboard_app
from tests.dashboard_support import client_app, redis_env, serve, start_worker
from tests.helpers import delete_prefix, unique_prefix
from tests.services import missing, require_service

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.timeout(120)]

TOKEN = "browser-test-token"


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        missing("Debian's chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("ASYNCQ_TEST_SCREENSHOT_DIR") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """A worker on Redis and a dashboard bound to every address (so a login is required)."""
    redis = require_service("redis")
    prefix = unique_prefix()
    env = redis_env(redis, prefix, tmp_path)
    worker: subprocess.Popen[bytes] = start_worker(
        env, tmp_path / "worker.log", "--concurrency", "4", "--hostname", "w1@browser"
    )
    app = client_app(env, dashboard_token=TOKEN)
    try:
        with serve(app, host="0.0.0.0", history_path=tmp_path / "history.sqlite3", poll_interval=0.5) as url:
            yield env, url
    finally:
        worker.kill()
        worker.wait(10)
        asyncio.run(delete_prefix(redis, prefix))


def send(env: dict[str, str], task: Any, *args: Any) -> str:
    app = client_app(env)

    async def go() -> str:
        try:
            return (await app.send_task(task.name, list(args))).id
        finally:
            await app.aclose()

    # Playwright's sync API runs an event loop in the test's thread: produce from another thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result(timeout=30)


def add_entry(env: dict[str, str], name: str) -> None:
    app = client_app(env)

    async def go() -> None:
        try:
            await app.schedule.add(name, dashboard_app.add, 3600, args=[1, 2])
        finally:
            await app.aclose()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, go()).result(timeout=30)


def test_the_dashboard_in_a_browser(
    chromium: str, shots: Path, cluster: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    env, url = cluster
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(20_000)

            # Bound to 0.0.0.0: every page asks for the login first.
            page.goto(f"{url}/tasks")
            assert "/login" in page.url
            page.screenshot(path=shots / "dashboard-login.png")
            page.fill("input[name=token]", "wrong")
            page.click("form.stack button")
            page.wait_for_selector("text=Wrong credentials.")
            page.fill("input[name=token]", TOKEN)
            page.click("form.stack button")
            page.wait_for_url(f"{url}/tasks")

            # Tasks sent now appear and finish without a reload.
            page.evaluate("window.__notReloaded = true")
            ids = [send(env, dashboard_app.add, n, 2) for n in range(6)]
            for task_id in ids:
                page.wait_for_selector(f'tr[data-task="{task_id}"][data-state="SUCCESS"]')
            assert page.evaluate("window.__notReloaded") is True
            failed = send(env, dashboard_app.boom, "the disk is full")
            page.wait_for_selector(f'tr[data-task="{failed}"][data-state="FAILURE"]')
            page.screenshot(path=shots / "dashboard-tasks.png")

            # A failed task's traceback.
            page.click(f'tr[data-task="{failed}"] a')
            page.wait_for_selector("details.traceback pre")
            assert "ValueError: the disk is full" in page.inner_text("details.traceback pre")
            page.screenshot(path=shots / "dashboard-task-failed.png", full_page=True)

            # Revoke (terminate) a running task from its page; the state turns REVOKED live.
            running = send(env, dashboard_app.nap, 60)
            page.goto(f"{url}/tasks/{running}")
            page.wait_for_selector("#task-state:text('STARTED')")
            page.click("button.danger:text('Terminate')")
            page.wait_for_selector("p.flash.ok")
            page.wait_for_selector("#task-state:text('REVOKED')")

            # A dead-lettered task: requeued from the dead-letter page, it completes.
            ready = tmp_path / "ready"
            parked = send(env, dashboard_app.fragile, str(ready))
            page.goto(f"{url}/dead-letters")
            row = f'tr[data-letter="{parked}"]'
            page.wait_for_selector(row)
            page.screenshot(path=shots / "dashboard-dead-letters.png")
            ready.touch()
            page.click(f"{row} button")
            page.wait_for_selector("p.flash.ok")
            page.goto(f"{url}/tasks/{parked}")
            page.wait_for_selector("#task-state:text('SUCCESS')")

            # A beat entry disabled and enabled again from the scheduled page.
            add_entry(env, "hourly-add")
            page.goto(f"{url}/scheduled")
            entry = 'tr[data-entry="hourly-add"]'
            page.click(f"{entry} button:text('Disable')")
            page.wait_for_selector("p.flash.ok")
            assert "disabled" in page.inner_text(entry)
            page.screenshot(path=shots / "dashboard-scheduled.png")
            page.click(f"{entry} button:text('Enable')")
            page.wait_for_selector(f"{entry} button:text('Disable')")

            # Overview and workers, live; then the task list at phone width.
            page.goto(f"{url}/")
            page.wait_for_selector('tr[data-worker="w1@browser"]')
            deadline = time.monotonic() + 10
            while "tasks/s" not in page.inner_text("section.cards") and time.monotonic() < deadline:
                page.wait_for_timeout(100)
            page.screenshot(path=shots / "dashboard-overview.png", full_page=True)
            page.goto(f"{url}/workers")
            page.click("details.actions summary")
            page.screenshot(path=shots / "dashboard-workers.png", full_page=True)
            page.set_viewport_size({"width": 390, "height": 844})
            page.goto(f"{url}/tasks")
            page.wait_for_selector(f'tr[data-task="{parked}"]')
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            page.screenshot(path=shots / "dashboard-phone.png")
        finally:
            browser.close()
