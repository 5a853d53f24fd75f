"""Run the chaos scenarios and print the table: ``python -m tests.chaos [--full]``.

``--full`` runs 2,000 tasks per case (the size docs/reliability.md reports); the default is
the test suite's size. ``--scenario`` and ``--broker`` (repeatable) pick cases.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.harness import BROKERS, SCENARIOS, TABLE_HEADER, applies, run_scenario
from tests.servers import PostgresCluster, RabbitNode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--full", action="store_true", help="2,000 tasks per case")
    parser.add_argument("--total", type=int, help="tasks per case (overrides --full)")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--broker", action="append", choices=BROKERS)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    parser.add_argument("--seed", type=int, help="the fault's timing and victims (default: random)")
    args = parser.parse_args(argv)
    # Started in the background, the process may ignore SIGINT: make SIGINT and SIGTERM stop
    # it through the finally blocks that stop its workers and servers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    total = args.total or (2000 if args.full else 300)
    brokers = args.broker or list(BROKERS)
    rabbit: RabbitNode | None = None
    if any(b.startswith("rabbitmq") for b in brokers):
        rabbit = RabbitNode(Path(tempfile.mkdtemp(prefix="asyncq-chaos-rabbit-")))
        rabbit.start()
    postgres: PostgresCluster | None = None
    if "postgres" in brokers:
        postgres = PostgresCluster()
        postgres.init()
        postgres.start()
    print(f"{total} tasks per case, 2 workers x concurrency 50", flush=True)
    print(TABLE_HEADER, flush=True)
    failed = 0
    started = time.monotonic()
    try:
        for scenario in args.scenario or list(SCENARIOS):
            for broker in brokers:
                if not applies(scenario, broker):
                    print(run_scenario(scenario, broker).line(), flush=True)
                    continue
                row = run_scenario(
                    scenario,
                    broker,
                    total=total,
                    timeout=args.timeout,
                    rabbit=rabbit,
                    postgres=postgres,
                    seed=args.seed,
                )
                failed += not row.ok
                print(row.line() + ("" if row.ok else " FAILED"), flush=True)
    finally:
        if rabbit is not None:
            rabbit.stop()
        if postgres is not None:
            postgres.remove()
    print(f"{failed} case(s) failed; {time.monotonic() - started:.0f}s in all", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
