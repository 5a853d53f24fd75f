"""pytest fixtures for testing code that uses asyncq (loaded by asyncq's ``pytest11`` entry point).

Fixtures:
    asyncq_config: settings for the apps below; override it in a ``conftest.py``.
    asyncq_app: a fresh ``memory://`` App per test; run what it queued with
        ``await asyncq.testing.drain(asyncq_app)``.
    asyncq_eager_app: the same with ``task_always_eager`` and ``task_eager_propagates`` on.
    asyncq_worker: a worker embedded in the test's event loop, consuming ``asyncq_app``
        (needs pytest-asyncio).

Without the entry point (a source checkout), load it with ``-p asyncq.contrib.pytest_plugin``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from asyncq.app import App
from asyncq.sync import close_app, run_blocking_calls_on
from asyncq.testing import memory_app
from asyncq.worker.worker import Worker

__all__ = ["asyncq_app", "asyncq_config", "asyncq_eager_app", "asyncq_worker"]


@pytest.fixture
def asyncq_config() -> dict[str, Any]:
    """Settings applied to ``asyncq_app`` and ``asyncq_eager_app`` (override to change them)."""
    return {}


def _app(config: dict[str, Any]) -> Iterator[App]:
    app = memory_app("asyncq-test", **config)
    yield app
    close_app(app)  # connections the sync API opened, if any


@pytest.fixture
def asyncq_app(asyncq_config: dict[str, Any]) -> Iterator[App]:
    """A new App on ``memory://`` for this test; define its tasks in the test or a helper."""
    yield from _app(asyncq_config)


@pytest.fixture
def asyncq_eager_app(asyncq_config: dict[str, Any]) -> Iterator[App]:
    """A ``memory://`` App whose tasks run inline when sent, raising their errors there."""
    yield from _app({"task_always_eager": True, "task_eager_propagates": True, **asyncq_config})


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the worker fixture needs an event loop from pytest-asyncio
    pass
else:

    @pytest_asyncio.fixture
    async def asyncq_worker(asyncq_app: App) -> AsyncIterator[Worker]:
        """A worker for ``asyncq_app`` running in the test's event loop until the test ends."""
        # Sync code under test (run in a thread) then sends to this loop's memory queues.
        run_blocking_calls_on(asyncq_app, asyncio.get_running_loop())
        try:
            async with asyncq_app.worker(concurrency=8) as worker:
                yield worker
        finally:
            run_blocking_calls_on(asyncq_app, None)
            await asyncq_app.aclose()
