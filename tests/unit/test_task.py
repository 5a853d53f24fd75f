"""Tasks on their own: signatures, messages, direct and eager calls, the running task's request."""

from __future__ import annotations

from typing import Any

import pytest

from asyncq import Signature, State, current_task
from asyncq.constructs import Group
from asyncq.exceptions import NotRegistered
from asyncq.testing import drain, memory_app


class Boom(Exception):
    pass


def test_s_is_partial_and_si_is_immutable() -> None:
    app = memory_app()

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    partial, frozen = add.s(1), add.si(1, 2)
    assert isinstance(partial, Signature) and partial.app is app
    assert (partial.task, partial.args, partial.immutable) == ("add", (1,), False)
    assert (frozen.args, frozen.immutable) == ((1, 2), True)
    # A parent's result is prepended to a partial only.
    assert partial.clone((9,)).args == (9, 1)
    assert frozen.clone((9,)).args == (1, 2)


def test_signature_takes_send_options_by_celery_name() -> None:
    app = memory_app()

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    sig = add.signature((1, 2), countdown=5, priority=3, queue="fast")
    assert sig.options == {"countdown": 5.0, "priority": 3, "queue": "fast"}
    with pytest.raises(TypeError, match="unknown signature option 'cuontdown'"):
        add.signature((1, 2), cuontdown=5)


def test_map_starmap_and_chunks_are_builtin_messages() -> None:
    app = memory_app()

    @app.task(name="add", queue="math")
    def add(x: int, y: int) -> int:
        return x + y

    mapped = add.map([1, 2])
    assert (mapped.task, mapped.kwargs) == ("asyncq.map", {"task": "add", "it": [1, 2]})
    assert mapped.options["queue"] == "math"  # runs where the task runs
    assert add.starmap([(1, 2)]).kwargs["it"] == [[1, 2]]
    chunks = add.chunks([(i, i) for i in range(5)], 2)
    assert isinstance(chunks, Group)
    assert [len(member.kwargs["it"]) for member in chunks.tasks] == [2, 2, 1]
    with pytest.raises(ValueError, match="chunk size must be at least 1"):
        add.chunks([], 0)


def test_build_message_routes_and_times() -> None:
    app = memory_app(task_routes={"add": "routed"})

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    message = add.build_message((1, 2), countdown=30, priority=7, headers={"k": "v"})
    assert (message.task, message.args, message.queue, message.priority) == ("add", [1, 2], "routed", 7)
    assert message.eta is not None and message.headers == {"k": "v"}
    assert add.build_message((1, 2), queue="explicit").queue == "explicit"


def test_calling_a_task_runs_it_here_with_an_eager_request() -> None:
    app = memory_app()
    seen: list[Any] = []

    @app.task(name="who", bind=True)
    def who(self: Any) -> str:
        seen.append(current_task())
        return str(self.request.task)

    assert who() == "who"
    assert seen[0] is who
    assert current_task() is None  # reset after the call


async def test_async_task_call_returns_a_coroutine() -> None:
    app = memory_app()

    @app.task(name="double")
    async def double(x: int) -> int:
        return x * 2

    assert await double(4) == 8


async def test_apply_runs_inline_and_keeps_the_failure_in_the_result() -> None:
    app = memory_app()

    @app.task(name="boom")
    def boom() -> None:
        raise Boom("inline")

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    assert await (await add.apply((1, 2))).get() == 3
    result = await boom.apply()
    with pytest.raises(Boom, match="inline"):
        await result.get()
    assert await app.broker.queue_length(app.conf.task_default_queue) == 0  # nothing was sent


async def test_enqueue_sends_and_a_worker_pass_finishes_it() -> None:
    app = memory_app()

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    result = await add.enqueue(2, 3)
    assert await result.state() == State.PENDING
    await drain(app)
    assert await result.get(timeout=5) == 5


def test_stand_in_task_builds_messages_but_does_not_run() -> None:
    app = memory_app()
    remote = app.stand_in_task("elsewhere.task")
    assert remote.build_message((1,)).task == "elsewhere.task"
    with pytest.raises(NotRegistered):
        remote._invoke((), {})


def test_settings_changed_after_a_first_message_apply_to_the_next() -> None:
    app = memory_app()

    @app.task
    def job() -> None: ...

    first = job.build_message()
    assert (first.queue, first.priority, first.ignore_result) == ("default", None, False)
    app.conf.task_default_queue = "other"
    app.conf.task_default_priority = 3
    app.conf.task_ignore_result = True
    message = job.build_message()
    assert (message.queue, message.priority, message.ignore_result) == ("other", 3, True)
    app.conf.task_routes[job.name] = "routed"  # edited in place, not assigned
    assert job.build_message().queue == "routed"
    assert job.build_message(queue="given").queue == "given"
    app.conf.task_serializer = "msgpack"
    assert job.build_message().content_type == "application/x-msgpack"
    assert job.build_message(serializer="json").content_type == "application/json"


def test_task_options_changed_after_a_first_message_apply_to_the_next() -> None:
    app = memory_app()

    @app.task
    def job() -> None: ...

    assert job.build_message().queue == "default"
    job.options.queue = "elsewhere"
    job.options.priority = 7
    job.options.ignore_result = True
    job.options.serializer = "msgpack"
    message = job.build_message()
    assert (message.queue, message.priority, message.ignore_result) == ("elsewhere", 7, True)
    assert message.content_type == "application/x-msgpack"
