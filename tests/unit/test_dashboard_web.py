"""The dashboard's pages, API and access control in-process (httpx over ASGI, the memory drivers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount

from asyncq import App
from asyncq.dashboard import create_app
from asyncq.dashboard.auth import Auth, is_loopback
from asyncq.dashboard.server import build
from asyncq.exceptions import ConfigurationError

PAGES = ("/", "/workers", "/tasks", "/queues", "/dead-letters", "/scheduled")


def make_app() -> App:
    return App("web", broker="memory://user:hunter2@localhost/", backend="memory://")


async def seed(web: Starlette) -> None:
    now = time.time()
    common = {"uuid": "0f0f-task", "name": "web.add", "queue": "default", "hostname": "w1", "retries": 0}
    await web.state.dashboard.history.add(
        [
            {**common, "type": "task-received", "timestamp": now, "args": [1, 2], "kwargs": {}},
            {**common, "type": "task-failed", "timestamp": now + 0.1, "exception_type": "KeyError",
             "exception_message": "'missing'", "runtime": 0.1},
        ]
    )  # fmt: skip


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    web = create_app(make_app(), history_path=tmp_path / "h.sqlite3")
    await seed(web)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://127.0.0.1") as http:
        yield http
    web.state.dashboard.history.close()


async def test_every_page_renders_on_the_server(client: httpx.AsyncClient) -> None:
    for path in PAGES:
        page = await client.get(path)
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html")
        assert "<table" in page.text or path == "/scheduled", path
        assert "https://" not in page.text  # nothing from a CDN
    tasks = await client.get("/tasks")
    assert 'data-task="0f0f-task"' in tasks.text and "FAILURE" in tasks.text
    detail = await client.get("/tasks/0f0f-task")
    assert "KeyError" in detail.text and "[1, 2]" in detail.text
    assert 'name="csrf"' in detail.text  # its forms carry the CSRF token
    partial = await client.get("/tasks?partial=1")
    assert "<html" not in partial.text and 'data-task="0f0f-task"' in partial.text


async def test_passwords_are_never_shown(client: httpx.AsyncClient) -> None:
    overview = await client.get("/api/overview")
    assert overview.json()["broker"] == "memory://user:***@localhost/"
    assert "hunter2" not in (await client.get("/")).text


async def test_filters_and_bad_input(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/tasks", params={"state": "SUCCESS"})).json()["total"] == 0
    assert (await client.get("/api/tasks", params={"name": "web.add"})).json()["total"] == 1
    assert (await client.get("/api/tasks", params={"q": "0f0f"})).json()["total"] == 1
    assert (await client.get("/api/tasks", params={"within": "60"})).json()["total"] == 1
    assert (await client.get("/api/tasks", params={"since": str(time.time() + 60)})).json()["total"] == 0
    assert (await client.get("/api/tasks", params={"within": "soon"})).status_code == 400
    assert (await client.get("/tasks", params={"within": "3600"})).status_code == 200
    bad = await client.get("/api/tasks", params={"limit": "many"})
    assert bad.status_code == 400 and "limit" in bad.json()["error"]
    missing = await client.get("/api/tasks/nope")
    assert missing.status_code == 404
    assert (await client.get("/tasks/nope")).status_code == 404


async def test_actions_check_the_csrf_token(client: httpx.AsyncClient) -> None:
    refused = await client.post("/queues/default/purge", data={"next": "/queues"})
    assert refused.status_code == 403
    token = (await client.get("/queues")).cookies.get("asyncq_csrf") or client.cookies["asyncq_csrf"]
    done = await client.post("/queues/default/purge", data={"csrf": token, "next": "/queues"})
    assert done.status_code == 303
    assert done.headers["location"].startswith("/queues?msg=0+messages+purged")
    # Only this dashboard's paths: no open redirect.
    away = await client.post("/queues/default/purge", data={"csrf": token, "next": "//evil.example"})
    assert away.headers["location"].startswith("/?msg=")
    api = await client.post("/api/queues/default/purge", json={}, headers={"X-CSRF-Token": token})
    assert api.json() == {"ok": True, "message": "0 messages purged from default", "details": {"count": 0}}


async def test_it_mounts_in_an_existing_asgi_app(tmp_path: Path) -> None:
    dashboard = create_app(make_app(), history_path=tmp_path / "h.sqlite3")
    outer = Starlette(routes=[Mount("/ops/queue", app=dashboard)])
    transport = httpx.ASGITransport(app=outer)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        page = await http.get("/ops/queue/tasks")
        assert page.status_code == 200
        assert 'href="/ops/queue/workers"' in page.text
        assert 'href="/ops/queue/static/dashboard.css"' in page.text
        assert (await http.get("/ops/queue/static/live.js")).status_code == 200
    dashboard.state.dashboard.history.close()


async def test_a_login_is_asked_for_when_credentials_are_set(tmp_path: Path) -> None:
    web = create_app(make_app(), username="ops", password="pw", history_path=tmp_path / "h.sqlite3")
    transport = httpx.ASGITransport(app=web)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        assert (await http.get("/")).status_code == 303
        assert (await http.get("/api/tasks")).status_code == 401
        assert (await http.get("/healthz")).status_code == 200
        form = await http.get("/login")
        assert 'name="username"' in form.text
        csrf = http.cookies["asyncq_csrf"]
        wrong = await http.post("/login", data={"csrf": csrf, "username": "ops", "password": "no"})
        assert wrong.status_code == 401
        assert (await http.post("/login", data={"username": "ops", "password": "pw"})).status_code == 403
        ok = await http.post("/login", data={"csrf": csrf, "username": "ops", "password": "pw"})
        assert ok.status_code == 303
        assert (await http.get("/api/tasks")).status_code == 200
        assert (await http.post("/logout", data={"csrf": csrf})).status_code == 303
        assert (await http.get("/api/tasks")).status_code == 401
    web.state.dashboard.history.close()


def test_non_loopback_addresses_need_credentials(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    with pytest.raises(ConfigurationError, match="needs a login"):
        build(make_app(), "0.0.0.0")
    open_app = build(make_app(), "127.0.0.1", history_path=tmp_path / "a.sqlite3")
    assert open_app.state.dashboard.auth.required is False
    guarded = build(make_app(), "0.0.0.0", token="t0ken", history_path=tmp_path / "b.sqlite3")
    assert guarded.state.dashboard.auth.required is True
    with pytest.raises(ValueError, match="both"):
        Auth(username="ops")


def test_secrets_are_redacted_from_the_settings() -> None:
    app = App("web", broker="memory://", config={"dashboard_token": "t0ken", "dashboard_password": "pw"})
    shown = repr(app.conf)
    assert "t0ken" not in shown and "'pw'" not in shown


async def test_a_mounted_dashboard_follows_the_events_without_a_lifespan(tmp_path: Path) -> None:
    app = App("live", broker="memory://", backend="memory://", config={"events_include_args": True})

    @app.task
    async def double(x: int) -> int:
        return 2 * x

    dashboard = create_app(app, history_path=tmp_path / "h.sqlite3")
    outer = Starlette(routes=[Mount("/q", app=dashboard)])  # Starlette runs no lifespan of a mount
    feed = dashboard.state.dashboard.feed
    transport = httpx.ASGITransport(app=outer)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        assert (await http.get("/q/healthz")).status_code == 200  # the first request starts the reader
        await asyncio.wait_for(feed.connected.wait(), 10)
        async with app.worker(send_events=True, hostname="w-live"):
            result = await double.enqueue(21)
            assert await result.get(timeout=10) == 42

            async def recorded() -> dict[str, Any]:
                while True:
                    row = (await http.get(f"/q/api/tasks/{result.id}")).json().get("task")
                    if row and row["state"] == "SUCCESS":
                        return dict(row)
                    await asyncio.sleep(0.05)

            row = await asyncio.wait_for(recorded(), 10)
        assert (row["name"], row["args"], row["worker"]) == (double.name, [21], "w-live")
    await feed.aclose()
    dashboard.state.dashboard.history.close()
    await app.aclose()
