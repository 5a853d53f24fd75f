"""Tasks are typed: mypy rejects wrong arguments and infers result types."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLE = textwrap.dedent(
    """
    from typing import Any
    from asyncq import App

    app = App("typed", broker="memory://")

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def concat(a: str, b: str) -> str:
        return a + b

    @app.task(bind=True, max_retries=3)
    def divide(self: Any, x: float, y: float) -> float:
        return x / y

    async def main() -> None:
        r = await add.enqueue(4, 4)
        value = await r.get()
        reveal_type(value)
        awaited = await r
        reveal_type(awaited)
        reveal_type(await (await concat.enqueue("a", "b")).get())
        reveal_type(await (await divide.enqueue(1.0, 2.0)).get())
        reveal_type(concat("a", "b"))
        await add.enqueue("a", 4)  # E: wrong argument type
        await divide.enqueue(1.0)  # E: missing argument
    """
)


@pytest.mark.slow
def test_mypy_checks_task_signatures(tmp_path: Path) -> None:
    path = tmp_path / "typed_example.py"
    path.write_text(EXAMPLE)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = out.stdout.splitlines()
    # mypy versions differ on whether they print "builtins.int" or "int".
    reveals = [
        line.split("Revealed type is ")[1].strip('"').removeprefix("builtins.")
        for line in lines
        if "Revealed type is" in line
    ]
    assert reveals == ["int", "int", "str", "float", "str"], out.stdout
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == 2, out.stdout
    assert 'Argument 1 to "enqueue" of "Task" has incompatible type "str"; expected "int"' in errors[0]
    assert 'Missing positional argument "y"' in errors[1]
