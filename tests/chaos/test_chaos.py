"""Workers killed, broker restarted, connections dropped, poison, result backend stopped.

Each case runs ``TOTAL`` tasks through 2 supervised worker processes on one broker while one
fault happens (see ``tests/chaos/harness.py``), then asserts the musts: no task lost, no
healthy task dead-lettered, exactly one dead letter per poison message. Duplicates, time to
complete, recovery time and producer errors are printed, one table row per case, at the end
of the run. ``python -m tests.chaos --full`` runs the same at full size and prints the table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.conftest import ROWS
from tests.chaos.harness import BROKERS, SCENARIOS, applies, describe, run_scenario
from tests.servers import RabbitNode

TOTAL = 300
#: Each poison message costs worker crashes and sandboxed runs (most of the suite's time): five
#: poison messages among 45 healthy ones prove as much as ten among 90, in half the time.
POISON_TOTAL = 50

#: Cases that fail today because of a known bug being fixed elsewhere: (scenario, broker) -> bug.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def cases() -> list[object]:
    made = []
    for scenario in SCENARIOS:
        for broker in BROKERS:
            if not applies(scenario, broker):
                continue  # the embedded store has no server to restart or cut off
            marks = [pytest.mark.rabbitmq] if broker.startswith("rabbitmq") else []
            if broker == "postgres":
                marks.append(pytest.mark.postgres)
            if (scenario, broker) in KNOWN_BUGS:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[scenario, broker]))
            made.append(pytest.param(scenario, broker, marks=marks, id=f"{scenario}-{broker}"))
    return made


pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(400)]


@pytest.mark.usefixtures("redis_server_installed")
@pytest.mark.parametrize(("scenario", "broker"), cases())
def test_chaos(scenario: str, broker: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    rabbit: RabbitNode | None = None
    if broker.startswith("rabbitmq"):
        rabbit = request.getfixturevalue("rabbit_node")
    total = POISON_TOTAL if SCENARIOS[scenario].poison else TOTAL
    row = run_scenario(scenario, broker, total=total, timeout=240, rabbit=rabbit, directory=tmp_path)
    ROWS.append(row)
    print(row.line())
    assert row.ok, f"{scenario} on {broker}: {describe(row)}"
