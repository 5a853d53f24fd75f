"""Chaos suite fixtures: one private RabbitMQ node and PostgreSQL cluster per session; the table."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import TABLE_HEADER, Row
from tests.servers import PostgresCluster, RabbitNode
from tests.services import missing

ROWS: list[Row] = []


@pytest.fixture(scope="session")
def rabbit_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A RabbitMQ node of the suite's own (the restart scenario stops it), started once."""
    if shutil.which("rabbitmqctl") is None:
        missing("rabbitmqctl is not installed; the RabbitMQ chaos scenarios need their own node")
    node = RabbitNode(Path(tmp_path_factory.mktemp("rabbit")))
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of the suite's own (the restart scenario stops it), started once."""
    cluster = PostgresCluster()
    try:
        cluster.init()
        cluster.start()
    except BaseException:
        cluster.remove()
        raise
    yield cluster
    cluster.remove()


@pytest.fixture
def redis_server_installed() -> None:
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed; the chaos scenarios start their own")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ROWS:
        terminalreporter.section("chaos: one row per scenario and broker")
        terminalreporter.write_line(TABLE_HEADER)
        for row in ROWS:
            terminalreporter.write_line(row.line())
