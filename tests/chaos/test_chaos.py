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
from tests.servers import PostgresCluster, RabbitNode

TOTAL = 300
#: Each poison message costs worker crashes and sandboxed runs (most of the suite's time): five
#: poison messages among 45 healthy ones prove as much as ten among 90, in half the time.
POISON_TOTAL = 50

#: Cases that fail today because of a known bug being fixed elsewhere: (scenario, broker) -> bug.
KNOWN_BUGS: dict[tuple[str, str], str] = {}

#: Cases run only by ``python -m tests.chaos``, not by the suite: (scenario, broker) -> why.
SCRIPT_ONLY: dict[tuple[str, str], str] = {
    # The result backend's faults do not depend on the broker; the suite runs them on the
    # others. SQS's poison case takes about a minute on moto: the suite keeps sigkill there.
    ("poison", "sqs"): "suite time",
    ("backend-stop", "sqs"): "suite time",
    ("backend-restart", "sqs"): "suite time",
    ("backend-stop", "kafka"): "suite time",
    ("backend-restart", "kafka"): "suite time",
}


def cases() -> list[object]:
    made = []
    for scenario in SCENARIOS:
        for broker in BROKERS:
            if not applies(scenario, broker) or (scenario, broker) in SCRIPT_ONLY:
                continue  # no server to restart or cut off, or left to the script
            marks = [pytest.mark.rabbitmq] if broker.startswith("rabbitmq") else []
            if broker in ("postgres", "kafka", "sqs"):
                marks.append(getattr(pytest.mark, broker))
            if (scenario, broker) in KNOWN_BUGS:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[scenario, broker]))
            made.append(pytest.param(scenario, broker, marks=marks, id=f"{scenario}-{broker}"))
    return made


pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(400)]


@pytest.mark.usefixtures("redis_server_installed")
@pytest.mark.parametrize(("scenario", "broker"), cases())
def test_chaos(scenario: str, broker: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    rabbit: RabbitNode | None = None
    postgres: PostgresCluster | None = None
    if broker.startswith("rabbitmq"):
        rabbit = request.getfixturevalue("rabbit_node")
    if broker == "postgres":
        postgres = request.getfixturevalue("postgres_cluster")
    total = POISON_TOTAL if SCENARIOS[scenario].poison else TOTAL
    row = run_scenario(
        scenario, broker, total=total, timeout=240, rabbit=rabbit, postgres=postgres, directory=tmp_path
    )
    ROWS.append(row)
    print(row.line())
    assert row.ok, f"{scenario} on {broker}: {describe(row)}"
