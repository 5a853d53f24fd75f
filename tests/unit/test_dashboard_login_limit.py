"""The login form's rate limit: failed logins per client address and per user name; 429 + Retry-After."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest

from asyncq import App
from asyncq.dashboard import create_app
from asyncq.dashboard.throttle import LoginThrottle

Client = Callable[[str], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    """A client of one dashboard (3 failures a minute allowed) calling from the given address."""
    app = App("web", broker="memory://", backend="memory://", config={"dashboard_login_attempts": 3})
    web = create_app(app, username="ops", password="pw", history_path=tmp_path / "h.sqlite3")

    @asynccontextmanager
    async def connect(address: str) -> AsyncIterator[httpx.AsyncClient]:
        transport = httpx.ASGITransport(app=web, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://dash.example") as http:
            await http.get("/login")  # the CSRF cookie
            yield http

    yield connect
    web.state.dashboard.history.close()


async def log_in(http: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    form = {"csrf": http.cookies["asyncq_csrf"], "username": username, "password": password}
    return await http.post("/login", data=form)


async def test_one_address_is_limited_whatever_user_it_tries(client: Client) -> None:
    async with client("10.0.0.1") as http:
        for name in ("admin", "root", "ops"):
            assert (await log_in(http, name, "guess")).status_code == 401
        refused = await log_in(http, "ops", "pw")  # right, but refused unheard
        assert refused.status_code == 429
        assert 0 < int(refused.headers["Retry-After"]) <= 60
        assert "Too many failed logins" in refused.text
        assert (await http.get("/api/tasks")).status_code == 401
    async with client("10.0.0.2") as other:
        # Another address logs in: each user name above failed once only.
        assert (await log_in(other, "ops", "pw")).status_code == 303


async def test_one_user_is_limited_from_every_address(client: Client) -> None:
    for n in range(3):
        async with client(f"10.0.1.{n}") as http:
            assert (await log_in(http, "ops", "guess")).status_code == 401
    async with client("10.0.1.99") as http:
        refused = await log_in(http, "ops", "pw")
        assert refused.status_code == 429
        assert "Retry-After" in refused.headers
        # Another user name from this fresh address is heard (and is wrong).
        assert (await log_in(http, "guest", "pw")).status_code == 401


async def test_a_successful_login_clears_its_failures(client: Client) -> None:
    async with client("10.0.2.1") as http:
        for _ in range(2):
            assert (await log_in(http, "ops", "guess")).status_code == 401
        assert (await log_in(http, "ops", "pw")).status_code == 303
        for _ in range(2):
            assert (await log_in(http, "ops", "guess")).status_code == 401
        assert (await log_in(http, "ops", "pw")).status_code == 303


async def test_wrong_bearer_tokens_count_against_the_address(tmp_path: Path) -> None:
    app = App("web", broker="memory://", backend="memory://", config={"dashboard_login_attempts": 2})
    web = create_app(app, token="right-token", history_path=tmp_path / "h.sqlite3")
    transport = httpx.ASGITransport(app=web, client=("10.0.3.1", 40000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://dash.example") as http:
            for _ in range(2):
                wrong = await http.get("/api/tasks", headers={"Authorization": "Bearer guess"})
                assert wrong.status_code == 401
            refused = await http.get("/api/tasks", headers={"Authorization": "Bearer right-token"})
            assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    finally:
        web.state.dashboard.history.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_age_out_of_the_window() -> None:
    clock = Clock()
    throttle = LoginThrottle(2, 60.0, clock=clock)
    keys = throttle.keys("10.0.0.1", "ops")
    throttle.failed(keys)
    clock.now += 30
    throttle.failed(keys)
    assert throttle.retry_after(keys) == 30  # when the first failure ages out
    assert throttle.retry_after(throttle.keys("10.0.0.1", None)) == 30
    assert throttle.retry_after(throttle.keys("10.9.9.9", "other")) == 0
    clock.now += 30
    assert throttle.retry_after(keys) == 0
    clock.now += 30
    assert throttle.retry_after(keys) == 0
    assert len(throttle) == 0  # aged-out keys are dropped


def test_memory_is_bounded_and_the_limit_can_be_off() -> None:
    throttle = LoginThrottle(1, 60.0, max_keys=100)
    for n in range(1000):
        throttle.failed(throttle.keys(f"10.{n // 256}.{n % 256}.1", f"user{n}"))
    assert len(throttle) == 100
    assert throttle.retry_after(throttle.keys("10.3.231.1", "user999")) > 0  # the latest are kept
    off = LoginThrottle(0)
    off.failed(["addr:x"])
    assert off.retry_after(["addr:x"]) == 0
    with pytest.raises(ValueError, match="dashboard_login_window"):
        LoginThrottle(5, 0)
