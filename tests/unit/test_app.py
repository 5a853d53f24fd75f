"""The App on its own: registry, routing, sending (to memory://) and eager mode."""

from __future__ import annotations

import pytest

from asyncq import App, State
from asyncq.exceptions import ConfigurationError, NotRegistered
from asyncq.testing import drain, memory_app


def test_task_names_default_to_module_and_qualified_name() -> None:
    app = memory_app()

    def plain() -> None:
        return None

    task = app.task(plain)
    assert task.name == f"{__name__}.{plain.__qualname__}"
    assert app.get_task(task.name) is task


def test_get_task_of_an_unknown_name_says_which() -> None:
    app = memory_app()
    with pytest.raises(NotRegistered, match="nope"):
        app.get_task("nope")


def test_builtins_are_registered_on_every_app() -> None:
    assert {"asyncq.map", "asyncq.starmap"} <= set(memory_app().tasks)


def test_route_prefers_explicit_queue_then_routes_then_default() -> None:
    app = memory_app(task_routes={"a": "routed"}, task_default_queue="dflt")
    assert app.route("a") == "routed"
    assert app.route("b") == "dflt"
    assert app.route("b", "task-queue") == "task-queue"


async def test_send_task_by_name_reaches_the_broker() -> None:
    app = memory_app()
    result = await app.send_task("defined.elsewhere", (1, 2), queue="remote")
    assert await app.broker.queue_length("remote") == 1
    assert await result.state() == State.PENDING


async def test_send_many_returns_handles_in_order() -> None:
    app = memory_app()

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    messages = [add.build_message((i, i)) for i in range(3)]
    results = await app.send_many(messages)
    assert [r.id for r in results] == [m.id for m in messages]
    await drain(app)
    assert [await r.get(timeout=5) for r in results] == [0, 2, 4]


async def test_always_eager_runs_at_send_time_without_a_broker() -> None:
    app = memory_app(task_always_eager=True)

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    result = await add.enqueue(2, 2)
    assert await result.get() == 4
    assert await (await add.s(1).apply_async((1,))).get() == 2  # signatures too
    assert await app.broker.queue_length(app.conf.task_default_queue) == 0


def test_unknown_send_protocol_is_a_clear_error() -> None:
    app = memory_app()
    with pytest.raises(ConfigurationError, match="unknown protocol 'kombu'"):
        app.send_task("t", protocol="kombu")


async def test_app_is_an_async_context_manager() -> None:
    async with App("ctx", broker="memory://", backend="memory://") as app:
        assert await app.broker.queue_length("celery") == 0
