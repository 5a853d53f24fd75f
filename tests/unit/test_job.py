"""JobRunner and Executor over memory:// drivers: a delivery taken, run and settled to the end."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from asyncq import State
from asyncq.brokers import Delivery, OutgoingMessage
from asyncq.exceptions import TimeLimitExceeded
from asyncq.task import Request
from asyncq.testing import memory_app
from asyncq.worker.executor import Executor
from asyncq.worker.job import JobRunner

#: Bound on a wait for a delivery or a result (never reached when the code is right).
TIMEOUT = 10.0

# Module level: a process executor's child imports the task by its module and name.
app = memory_app("job-tests", task_default_retry_delay=0)


class Boom(Exception):
    pass


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task
async def explode() -> None:
    raise Boom("no luck")


@app.task(bind=True, max_retries=3)
async def flaky(self: Any, failures: int) -> int:
    if self.request.retries < failures:
        raise self.retry(exc=Boom("again"), countdown=0)
    return self.request.retries


@app.task(time_limit=0.2)
async def stuck() -> None:
    await asyncio.Event().wait()  # never set: only the time limit ends it


@app.task(executor="thread")
def in_thread() -> bool:
    return threading.current_thread() is not threading.main_thread()


@app.task(executor="process")
def in_process() -> int:
    return os.getpid()


@pytest.fixture
async def runner() -> AsyncIterator[JobRunner]:
    executor = Executor(thread_pool_size=2, process_pool_size=1)
    yield JobRunner(app, executor, hostname="job-test@host", max_deliveries=10)
    await executor.aclose()
    await app.broker.purge("default")


async def take(queue: str = "default") -> Delivery:
    async with aclosing(app.broker.consume([queue], prefetch=1)) as deliveries:
        return await asyncio.wait_for(anext(deliveries), TIMEOUT)


async def run_once(runner: JobRunner) -> None:
    await runner.handle(await take())


async def test_success_stores_the_value_and_acks(runner: JobRunner) -> None:
    result = await add.enqueue(2, 3)
    await run_once(runner)
    assert await result.get(timeout=TIMEOUT) == 5
    assert await app.broker.queue_length("default") == 0


async def test_failure_stores_the_exception(runner: JobRunner) -> None:
    result = await explode.enqueue()
    await run_once(runner)
    assert await result.state() == State.FAILURE
    with pytest.raises(Boom, match="no luck"):
        await result.get(timeout=TIMEOUT)
    assert await app.broker.queue_length("default") == 0


async def test_retry_sends_the_task_again_until_it_succeeds(runner: JobRunner) -> None:
    result = await flaky.enqueue(2)
    await run_once(runner)
    assert await result.state() == State.RETRY
    await run_once(runner)
    await run_once(runner)
    assert await result.get(timeout=TIMEOUT) == 2  # succeeded on its third run
    assert await app.broker.queue_length("default") == 0


async def test_retries_past_max_retries_fail_with_the_original_error(runner: JobRunner) -> None:
    result = await flaky.enqueue(10)
    for _ in range(4):  # the first run and max_retries=3 retries
        await run_once(runner)
    with pytest.raises(Boom, match="again"):
        await result.get(timeout=TIMEOUT)
    assert await app.broker.queue_length("default") == 0


async def test_the_time_limit_ends_the_task_as_a_failure(runner: JobRunner) -> None:
    result = await stuck.enqueue()
    await run_once(runner)
    with pytest.raises(TimeLimitExceeded):
        await result.get(timeout=TIMEOUT)


async def test_a_revoked_task_is_not_run(runner: JobRunner) -> None:
    result = await add.enqueue(1, 1)
    runner.is_revoked = lambda task_id: task_id == result.id
    await run_once(runner)
    assert await result.state() == State.REVOKED
    assert await app.broker.queue_length("default") == 0


async def test_the_thread_executor_runs_off_the_loop(runner: JobRunner) -> None:
    result = await in_thread.enqueue()
    await run_once(runner)
    assert await result.get(timeout=TIMEOUT) is True


async def test_the_process_executor_runs_in_a_child(runner: JobRunner) -> None:
    result = await in_process.enqueue()
    await run_once(runner)
    assert await result.get(timeout=TIMEOUT) != os.getpid()


async def test_executor_run_returns_and_raises_like_the_call(runner: JobRunner) -> None:
    # Executor.run without a broker in between: the value and the exception come straight back.
    executor = runner.executor
    unlimited: dict[str, Any] = {"soft_time_limit": None, "time_limit": None}
    assert await executor.run(add, Request(id="direct", task=add.name, args=[4, 5]), **unlimited) == 9
    with pytest.raises(Boom):
        await executor.run(explode, Request(id="direct-2", task=explode.name), **unlimited)
    with pytest.raises(TimeLimitExceeded):
        await executor.run(
            stuck, Request(id="direct-3", task=stuck.name), soft_time_limit=None, time_limit=0.1
        )


@app.task(bind=True)
async def own_request(self: Any, x: int, *, y: int) -> dict[str, Any]:
    request = self.request
    names = ("id", "task", "args", "kwargs", "retries", "root_id", "parent_id", "group_id", "hostname")
    return {
        **{name: getattr(request, name) for name in names},
        "is_eager": request.is_eager,
        "delivery_info": request.delivery_info,
        "is_message": request.message is not None and request.message.id == request.id,
        "same_loop": request.loop is asyncio.get_running_loop(),
        "writer": request.state_writer is not None,
    }


async def test_the_request_carries_each_field_of_the_message(runner: JobRunner) -> None:
    # The runner builds Request positionally (it does so for every task): a field moved in
    # Request's definition shows up here.
    result = await own_request.apply_async(args=(1,), kwargs={"y": 2}, priority=3)
    await run_once(runner)
    seen = await result.get(timeout=TIMEOUT)
    assert seen == {
        "id": result.id,
        "task": own_request.name,
        "args": [1],
        "kwargs": {"y": 2},
        "retries": 0,
        "root_id": result.id,
        "parent_id": None,
        "group_id": None,
        "hostname": "job-test@host",
        "is_eager": False,
        "delivery_info": {"queue": "default", "delivery_count": 1, "priority": 3},
        "is_message": True,
        "same_loop": True,
        "writer": True,
    }


async def test_a_job_cancelled_before_its_first_step_frees_its_slot() -> None:
    # A job frees its slot as handle() ends; one cancelled before it ever ran never gets there.
    local = memory_app("job-tests-slots")
    async with local.worker(concurrency=1) as worker:
        slots = worker._slots
        assert slots is not None and slots.take_now()  # the consumer's take, for this job
        job = asyncio.get_running_loop().create_task(asyncio.sleep(0), name="asyncq.job.unstarted")
        worker._inflight.add(job)
        worker._cancel(job)  # as stop() or a revoke with terminate does, before its first step
        await asyncio.gather(job, return_exceptions=True)
        await asyncio.wait_for(slots.acquire(), TIMEOUT)  # the slot came back
        slots.release()
        assert job not in worker._inflight
    await local.aclose()


async def test_the_book_forgets_a_job_whose_transport_id_is_not_its_task_id(runner: JobRunner) -> None:
    # A producer of another kind may publish under an id of the transport's own: the book,
    # keyed by task id, must still drop the entry once the job is settled.
    message = add.build_message((2, 3))
    body = app.outgoing(message).body
    await app.broker.publish(OutgoingMessage(f"transport-{message.id}", "default", body))
    await run_once(runner)
    assert await app.AsyncResult(message.id).get(timeout=TIMEOUT) == 5
    assert runner.book.entries == {}
    assert runner.book.running() == [] and runner.book.reserved() == []


@pytest.mark.parametrize(("freeze", "frozen"), [(True, True), (False, False), ("auto", False)])
async def test_a_running_worker_keeps_its_start_up_objects_frozen_out_of_the_collector(
    freeze: bool | str, frozen: bool
) -> None:
    # auto freezes only in a worker that owns its process: embedded here, so not.
    local = memory_app("job-tests-gc", worker_gc_freeze=freeze)
    assert gc.get_freeze_count() == 0
    before = gc.get_threshold()
    async with local.worker(concurrency=1):
        assert (gc.get_freeze_count() > 0) is frozen
        # Frozen, the youngest generation is collected less often (a higher setting stays).
        assert gc.get_threshold() == ((max(before[0], 7000), *before[1:]) if frozen else before)
    assert gc.get_freeze_count() == 0  # given back to the collector when the worker stops
    assert gc.get_threshold() == before
    await local.aclose()


def test_a_worker_that_owns_its_process_freezes_by_default() -> None:
    local = memory_app("job-tests-gc-run")
    seen: list[int] = []

    @local.task
    async def probe() -> None:
        seen.append(gc.get_freeze_count())
        worker.stop()

    worker = local.worker(concurrency=1)

    async def send() -> None:
        await probe.enqueue()

    asyncio.run(send())
    worker.run()
    assert seen and seen[0] > 0
    assert gc.get_freeze_count() == 0
