"""Every limit store, the same tests: booked starts, slots with leases, renewal, release."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asyncq.brokers import broker_from_url
from asyncq.flow.store import LIMIT_STORES, LimitStore, limit_store_for
from tests.conformance.drivers_postgres import drop_schema, with_schema
from tests.helpers import delete_prefix, unique_prefix, until
from tests.services import require_service


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LimitStore]:
    prefix = schema = None
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    elif request.param == "redis":
        prefix = unique_prefix()
        url = f"{require_service('redis')}?key_prefix={prefix}"
    else:
        schema = f"asyncq_test_{uuid.uuid4().hex[:12]}"
        url = with_schema(require_service("postgres"), schema)
    broker = broker_from_url(url)
    await broker.connect()
    limits = limit_store_for(broker)
    assert limits is not None
    await limits.connect()
    try:
        yield limits
    finally:
        await limits.aclose()
        await broker.aclose()
        if prefix is not None:
            await delete_prefix(require_service("redis"), prefix)
        if schema is not None:
            await drop_schema(require_service("postgres"), schema)


def test_every_store_scheme_is_tested() -> None:
    modules = {path.partition(":")[0].rpartition(".")[2] for path in LIMIT_STORES.values()}
    assert modules == {"memory", "sqlite", "redis", "postgres"}  # the params of the fixture above


async def test_bookings_are_spaced_by_the_interval(store: LimitStore) -> None:
    first = await store.reserve("r", 0.1, 3, 1)
    assert first[0] == pytest.approx(0.0, abs=0.05)
    assert [b - a for a, b in itertools.pairwise(first)] == pytest.approx([0.1, 0.1], abs=1e-6)
    (later,) = await store.reserve("r", 0.1, 1, 1)
    assert later == pytest.approx(first[-1] + 0.1, abs=0.05)  # continues after the booked ones
    (other,) = await store.reserve("other", 0.1, 1, 1)
    assert other == pytest.approx(0.0, abs=0.05)  # limits are separate


async def test_slots_up_to_the_limit_then_back_on_release(store: LimitStore) -> None:
    assert await store.acquire("k", 2, ["a", "b", "c"], 30.0) == ["a", "b"]
    assert await store.acquire("k", 2, ["c", "a"], 30.0) == ["a"]  # a holder keeps its slot
    assert await store.count("k") == 2
    await store.release("k", ["a"])
    assert await store.acquire("k", 2, ["c"], 30.0) == ["c"]
    assert await store.acquire("j", 1, ["z"], 30.0) == ["z"]  # keys are separate
    await store.release("k", ["b", "c"])
    assert await store.count("k") == 0


async def test_an_unrenewed_lease_runs_out_and_a_renewed_one_does_not(store: LimitStore) -> None:
    assert await store.acquire("k", 2, ["dead", "alive"], 0.5) == ["dead", "alive"]
    for _ in range(3):
        await asyncio.sleep(0.25)
        await store.renew({"k": ["alive"]}, 0.5)
    await until(lambda: _is(store.count("k"), 1), "the unrenewed lease to run out")
    assert await store.acquire("k", 2, ["next", "more"], 30.0) == ["next"]  # its slot came back
    await store.renew({"k": ["dead"]}, 30.0)  # an expired slot is not taken back by renewing
    assert await store.count("k") == 2


async def _is(value: object, expected: int) -> bool:
    return await value == expected  # type: ignore[misc]
