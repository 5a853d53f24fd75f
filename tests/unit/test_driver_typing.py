"""mypy proves every registered driver class satisfies its Protocol, and rejects one that does not.

The checked module is generated from the registries, so a new driver is covered the day it is
registered; the deliberately broken drivers show the check has teeth.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from asyncq.backends import BACKENDS
from asyncq.brokers import BROKERS
from tests.typecheck import run_mypy

BROKEN = textwrap.dedent(
    """
    from collections.abc import AsyncIterator, Sequence

    from asyncq.backends.base import BackendCapabilities
    from asyncq.backends.memory import MemoryBackend
    from asyncq.brokers.memory import MemoryBroker


    class ConsumeReturnsIterator(MemoryBroker):
        async def consume(  # type: ignore[override]
            self, queues: Sequence[str], *, prefetch: int
        ) -> AsyncIterator[Delivery]:
            raise NotImplementedError
            yield


    class NoPurge:
        url = "broken://"
        capabilities = BrokerCapabilities()


    def _broken_consume(driver: ConsumeReturnsIterator) -> Broker:
        return driver  # BROKEN-1


    def _broken_purge(driver: NoPurge) -> Broker:
        return driver  # BROKEN-2


    class BlockingExpect(MemoryBackend):
        async def expect(self, task_id: str) -> None:  # type: ignore[override]
            raise NotImplementedError


    class WithoutHooks:  # a backend written against the old contract: no prepare / expect

        url = "broken://"
        capabilities = BackendCapabilities()

        async def connect(self) -> None: ...
        async def aclose(self) -> None: ...
        async def set(self, task_id: str, record: bytes, *, final: bool, ttl: float | None) -> None: ...
        async def get(self, task_id: str) -> bytes | None:
            return None
        async def get_many(self, task_ids: Sequence[str]) -> list[bytes | None]:
            return []
        async def wait(self, task_id: str, *, timeout: float | None) -> bytes | None:
            return None
        async def forget(self, task_id: str) -> None: ...
        async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
            return amount


    class ControlChannelOfWrongType(MemoryBroker):
        def control_channel(self) -> str:  # type: ignore[override]
            return "channel"


    def _broken_expect(driver: BlockingExpect) -> ResultBackend:
        return driver  # BROKEN-3


    def _broken_hooks(driver: WithoutHooks) -> ResultBackend:
        return driver  # BROKEN-4


    def _broken_control(driver: ControlChannelOfWrongType) -> Broker:
        return driver  # BROKEN-5
    """
)


def _checked_module() -> str:
    lines = [
        "from asyncq.backends.base import ResultBackend",
        "from asyncq.brokers.base import Broker, BrokerCapabilities, Delivery",
    ]
    checks = []
    for protocol, registry in (("Broker", BROKERS), ("ResultBackend", BACKENDS)):
        for n, target in enumerate(sorted(set(registry.values()))):
            module, _, cls = target.partition(":")
            alias = f"{protocol}Driver{n}"
            lines.append(f"from {module} import {cls} as {alias}")
            checks.append(f"def _check_{alias}(driver: {alias}) -> {protocol}:\n    return driver\n")
    return "\n".join(lines) + "\n\n\n" + "\n\n".join(checks) + BROKEN


@pytest.mark.slow
@pytest.mark.timeout(300)  # a cold mypy run of the whole package; slow on a loaded machine
def test_every_registered_driver_satisfies_its_protocol(tmp_path: Path) -> None:
    path = tmp_path / "drivers_checked.py"
    source = _checked_module()
    path.write_text(source)
    lines = run_mypy(path, tmp_path / "cache")
    errors = [line for line in lines if ": error:" in line]
    source_lines = source.splitlines()
    flagged = {int(line.split(":")[1]) for line in errors}
    broken = {n for n, text in enumerate(source_lines, 1) if "# BROKEN-" in text}
    # Every error is on a broken driver's line, and each broken driver is caught.
    assert flagged == broken, "\n".join(lines)
    assert len(BROKERS) > 0 and len(BACKENDS) > 0
