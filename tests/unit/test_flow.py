"""Flow control without servers: GCRA arithmetic, task declarations, the memory store, the lookup."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncq import App
from asyncq.exceptions import ConfigurationError
from asyncq.flow.gate import FlowGate
from asyncq.flow.gcra import reserve
from asyncq.flow.memory import MemoryLimitStore
from asyncq.testing import drain, memory_app

# -- GCRA ----------------------------------------------------------------------------------------


def test_idle_limit_starts_at_once_then_spaces_by_the_interval() -> None:
    tat, waits = reserve(0.0, 100.0, 0.05, 4)
    assert waits == pytest.approx([0.0, 0.05, 0.10, 0.15])
    assert tat == pytest.approx(100.2)


def test_bookings_continue_from_the_stored_arrival_time() -> None:
    tat, _ = reserve(0.0, 100.0, 0.1, 3)  # booked up to 100.3
    tat, waits = reserve(tat, 100.05, 0.1, 1)
    assert waits == pytest.approx([0.25]) and tat == pytest.approx(100.4)


def test_an_idle_period_earns_no_more_than_the_burst() -> None:
    tat, _ = reserve(0.0, 100.0, 0.1, 1)
    _, waits = reserve(tat, 500.0, 0.1, 5, burst=3)  # long idle: three at once, then spaced
    assert waits == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2])


def test_bad_arguments_are_refused() -> None:
    for args in ((0.0, 1.0, 0.0, 1), (0.0, 1.0, 0.1, -1)):
        with pytest.raises(ValueError, match="bad GCRA"):
            reserve(*args)
    with pytest.raises(ValueError, match="burst"):
        reserve(0.0, 1.0, 0.1, 1, burst=0)


@settings(max_examples=40)
@given(
    interval=st.floats(0.001, 10.0),
    bookings=st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(1, 20)), min_size=1, max_size=20),
)
def test_no_window_holds_more_starts_than_the_rate_allows(
    interval: float, bookings: list[tuple[float, int]]
) -> None:
    # Whenever and however many are asked for, booked starts are at least one interval apart.
    tat, clock, starts = 0.0, 1000.0, []
    for advance, count in bookings:
        clock += advance
        tat, waits = reserve(tat, clock, interval, count)
        assert all(w >= 0 for w in waits)
        starts += [clock + w for w in waits]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= interval * (1 - 1e-9) for gap in gaps)


# -- declarations --------------------------------------------------------------------------------


def test_concurrency_key_by_argument_name_positional_or_keyword() -> None:
    app = memory_app()

    @app.task(concurrency_key="tenant", max_concurrency=2)
    async def job(item: int, tenant: str = "none") -> None: ...

    limit = job.concurrency
    assert limit is not None and limit.limit == 2
    assert limit.key(job.name, (1, "acme"), {}) == f"{job.name}:acme"
    assert limit.key(job.name, (1,), {"tenant": "beta"}) == f"{job.name}:beta"
    assert limit.key(job.name, (1,), {}) == f"{job.name}:none"  # the default


def test_concurrency_key_callable_and_whole_task_and_bound() -> None:
    app = memory_app()

    @app.task(concurrency_key=lambda tenant_id, **_: tenant_id, max_concurrency=3)
    async def by_callable(tenant_id: str, size: int) -> None: ...

    @app.task(max_concurrency=1)
    async def whole() -> None: ...

    @app.task(bind=True, concurrency_key="region", max_concurrency=1)
    async def bound(self: Any, region: str) -> None: ...

    assert by_callable.concurrency is not None
    assert by_callable.concurrency.key("t", ("x",), {"size": 1}) == "t:x"  # by name, however passed
    assert by_callable.concurrency.key("t", ("y", 2), {}) == "t:y"
    assert whole.concurrency is not None and whole.concurrency.key("t", (), {}) == "t:*"
    assert bound.concurrency is not None and bound.concurrency.key("t", ("eu",), {}) == "t:eu"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency_key": "tenant"}, "max_concurrency must be an integer >= 1"),
        ({"max_concurrency": 0}, "max_concurrency must be an integer >= 1"),
        ({"concurrency_key": "nope", "max_concurrency": 1}, "names no argument; known: tenant"),
        ({"concurrency_key": 3, "max_concurrency": 1}, "an argument name or a callable"),
        (
            {"rate_limit": "1/s", "rate_limit_scope": "cluster"},
            "rate_limit_scope must be 'global' or 'worker'",
        ),
    ],
)
def test_bad_declarations_name_the_option(options: dict[str, Any], message: str) -> None:
    app = memory_app()
    with pytest.raises(ConfigurationError, match=message):

        @app.task(**options)
        async def job(tenant: str) -> None: ...


# -- the memory store ----------------------------------------------------------------------------


async def test_memory_store_slots_lease_release_and_renew() -> None:
    driver = object.__new__(type("Driver", (), {}))
    store, other = MemoryLimitStore(driver), MemoryLimitStore(driver)  # one driver: shared state
    assert await store.acquire("k", 2, ["a", "b", "c"], lease=0.2) == ["a", "b"]
    assert await other.acquire("k", 2, ["c", "a"], lease=0.2) == ["a"]  # a holder keeps its slot
    await store.release("k", ["a"])
    assert await other.acquire("k", 2, ["c"], lease=0.2) == ["c"]
    await store.renew({"k": ["b"]}, lease=5.0)
    await asyncio.sleep(0.3)  # c's lease runs out, b's was renewed
    assert await store.count("k") == 1
    await store.renew({"k": ["c"]}, lease=5.0)  # an expired slot is not taken back
    assert await store.count("k") == 1


async def test_memory_store_books_rate_starts() -> None:
    store = MemoryLimitStore(object.__new__(type("Driver", (), {})))
    first = await store.reserve("r", 0.1, 3, 1)
    assert first == pytest.approx([0.0, 0.1, 0.2], abs=0.01)
    (later,) = await store.reserve("r", 0.1, 1, 1)
    assert later == pytest.approx(0.3, abs=0.01)


# -- the store lookup ----------------------------------------------------------------------------


def test_a_global_limit_without_a_store_is_one_line_at_worker_start() -> None:
    pytest.importorskip("aio_pika")  # imported here, not in the loop (it reads package metadata)
    app = App("x", broker="amqp://guest:guest@127.0.0.1:5672//", backend="rpc://")

    @app.task(rate_limit="10/s")
    async def limited() -> None: ...

    async def gate() -> FlowGate:  # drivers are made per event loop: nothing connects here
        return FlowGate.for_app(app, hostname="h")

    with pytest.raises(ConfigurationError) as raised:
        asyncio.run(gate())
    text = str(raised.value)
    assert "\n" not in text and "amqp:// broker" in text and "rate_limit_scope='worker'" in text

    app.conf.update(task_default_rate_limit_scope="worker")  # per worker: no store needed
    assert asyncio.run(gate()).store is None


async def test_drain_runs_keyed_and_rate_limited_tasks() -> None:
    app = memory_app()

    @app.task(concurrency_key="tenant", max_concurrency=1)
    async def keyed(tenant: str) -> str:
        return tenant

    @app.task(rate_limit="100/s")
    async def paced() -> int:
        return 1

    await keyed.enqueue("a")
    await keyed.enqueue("a")
    await paced.enqueue()
    outcomes = await drain(app)
    assert [o.result for o in outcomes] == ["a", "a", 1]
