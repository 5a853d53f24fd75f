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
