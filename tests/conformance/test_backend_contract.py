"""The result-backend contract: every registered backend driver must pass every test here.

Skips come only from a driver's declared capabilities.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from asyncq.backends import BACKENDS, ResultBackend
from tests.conformance.conftest import BACKEND_PARAMS

TIMEOUT = 10.0


@pytest.fixture
def task_id() -> str:
    return str(uuid.uuid4())


def test_every_registered_driver_has_a_contract_param() -> None:
    drivers = {target.split(":")[0].rsplit(".", 1)[1] for target in BACKENDS.values()}
    params = {p.values[0] for p in BACKEND_PARAMS.values()}
    assert drivers <= params, f"drivers without a conformance param: {drivers - params}"


async def test_set_get_forget(backend_factory, task_id: str) -> None:
    backend: ResultBackend = await backend_factory()
    assert await backend.get(task_id) is None
    await backend.set(task_id, b'{"status":"STARTED"}', final=False, ttl=60)
    assert await backend.get(task_id) == b'{"status":"STARTED"}'
    await backend.set(task_id, b"\x00binary\xff", final=True, ttl=60)
    assert await backend.get(task_id) == b"\x00binary\xff"
    await backend.forget(task_id)
    assert await backend.get(task_id) is None


async def test_get_many_in_order(backend_factory) -> None:
    backend: ResultBackend = await backend_factory()
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for i, tid in enumerate(ids[:4]):
        await backend.set(tid, str(i).encode(), final=True, ttl=60)
    assert await backend.get_many(ids) == [b"0", b"1", b"2", b"3", None]
    assert await backend.get_many([]) == []


async def test_wait_returns_final_record_already_there(backend_factory, task_id: str) -> None:
    backend: ResultBackend = await backend_factory()
    await backend.set(task_id, b"done", final=True, ttl=60)
    assert await backend.wait(task_id, timeout=TIMEOUT) == b"done"


async def test_wait_ignores_non_final_and_times_out(backend_factory, task_id: str) -> None:
    backend: ResultBackend = await backend_factory()
    await backend.set(task_id, b"progress", final=False, ttl=60)
    assert await backend.wait(task_id, timeout=0.3) is None


async def test_wait_wakes_on_final_set(backend_factory, task_id: str) -> None:
    backend: ResultBackend = await backend_factory()
    waiters = [asyncio.create_task(backend.wait(task_id, timeout=TIMEOUT)) for _ in range(20)]
    await asyncio.sleep(0.05)  # let the waiters subscribe; correctness does not depend on it
    await backend.set(task_id, b"progress", final=False, ttl=60)
    await backend.set(task_id, b"result", final=True, ttl=60)
    assert await asyncio.wait_for(asyncio.gather(*waiters), TIMEOUT) == [b"result"] * 20


async def test_many_ids_waited_at_once(backend_factory) -> None:
    backend: ResultBackend = await backend_factory()
    ids = [str(uuid.uuid4()) for _ in range(100)]
    waiters = [asyncio.create_task(backend.wait(tid, timeout=TIMEOUT)) for tid in ids]
    for tid in reversed(ids):
        await backend.set(tid, tid.encode(), final=True, ttl=60)
    assert await asyncio.wait_for(asyncio.gather(*waiters), TIMEOUT) == [tid.encode() for tid in ids]


async def test_records_expire(backend_factory, task_id: str) -> None:
    backend: ResultBackend = await backend_factory()
    await backend.set(task_id, b"short-lived", final=True, ttl=1)
    assert await backend.get(task_id) == b"short-lived"
    deadline = time.monotonic() + TIMEOUT
    while await backend.get(task_id) is not None:
        assert time.monotonic() < deadline, "record did not expire"
        await asyncio.sleep(0.1)


async def test_incr_is_atomic(backend_factory) -> None:
    backend: ResultBackend = await backend_factory()
    if not backend.capabilities.counters:
        pytest.skip(f"{backend.url}: capabilities.counters is False")
    key = f"chord-{uuid.uuid4()}"
    values = await asyncio.gather(*(backend.incr(key, ttl=60) for _ in range(100)))
    assert sorted(values) == list(range(1, 101))
    assert await backend.incr(key, 5, ttl=60) == 105
    assert await backend.incr(f"{key}-other", ttl=60) == 1


async def test_records_shared_between_instances(backend_factory, task_id: str) -> None:
    writer: ResultBackend = await backend_factory()
    if not writer.capabilities.shared:
        pytest.skip(f"{writer.url}: capabilities.shared is False")
    reader: ResultBackend = await backend_factory()
    waiter = asyncio.create_task(reader.wait(task_id, timeout=TIMEOUT))
    await writer.set(task_id, b"cross-process", final=True, ttl=60)
    assert await asyncio.wait_for(waiter, TIMEOUT) == b"cross-process"
    assert await reader.get(task_id) == b"cross-process"
    key = f"counter-{uuid.uuid4()}"
    counts = await asyncio.gather(*(b.incr(key, ttl=60) for b in (writer, reader) for _ in range(25)))
    assert sorted(counts) == list(range(1, 51))
