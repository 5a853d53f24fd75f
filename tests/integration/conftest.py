"""Apps over the embedded drivers for end-to-end worker tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asyncq import App


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
async def app(store_url: str) -> AsyncIterator[App]:
    app = App("it", broker=store_url, config={"task_default_retry_delay": 0.05})
    yield app
    await app.aclose()
