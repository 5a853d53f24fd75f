"""``asyncq inspect`` / ``asyncq control``: argument checking and table output (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from asyncq.cli import cli
from asyncq.cli_control import table

APP = "tests.apps.control_app:app"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"ASYNCQ_BROKER_URL": f"sqlite:///{tmp_path / 'b.db'}", "ASYNCQ_RESULT_BACKEND": "memory://"}


def test_table_aligns_columns_and_says_none_when_empty() -> None:
    assert table(["a", "bb"], [["xxx", 1], ["y", 22]]).splitlines() == ["a    bb", "xxx  1", "y    22"]
    assert table(["a"], []) == "(none)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", APP, "everything"], "unknown inspect command 'everything'"),
        (["inspect", APP, "ping", "--timeout", "0"], "--timeout must be > 0"),
        (["control", APP, "explode"], "unknown control command 'explode'"),
        (["control", APP, "revoke"], "usage: asyncq control APP revoke ID"),
        (["control", APP, "rate-limit", "t"], "usage: asyncq control APP rate-limit TASK RATE"),
        (["control", APP, "pool-resize", "many"], "pool-resize needs a whole number, got 'many'"),
        (["control", APP, "time-limit", "t", "soon", "1"], "SOFT must be a number of seconds or 'none'"),
    ],
)
def test_bad_arguments_print_one_line_and_exit_2(args: list[str], message: str, env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_inspect_with_no_workers_prints_none(env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["inspect", APP, "ping", "--timeout", "0.3"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "(none)"
    result = CliRunner().invoke(cli, ["control", APP, "shutdown", "--timeout", "0.3"], env=env)
    assert result.exit_code == 0 and result.output.strip() == "no worker answered"
