"""Tasks are typed: mypy rejects wrong arguments and infers result types."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.typecheck import run_mypy

EXAMPLE = textwrap.dedent(
    """
    from typing import Any
    from asyncq import App, group

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
        reveal_type(await add.apply_async((1, 2), countdown=1))
        await add.enqueue("a", 4)  # E: wrong argument type
        await divide.enqueue(1.0)  # E: missing argument

    def sync_main() -> None:
        reveal_type(add.delay(4, 4).get(timeout=10))
        reveal_type(concat.apply_async(("a", "b"), countdown=1).get())
        reveal_type(group(add.s(i, i) for i in range(3)).delay().get())
        reveal_type(add.delay(1, 1).ready())
        add.delay("a", 4)  # E: wrong argument type
        divide.delay(1.0)  # E: missing argument
    """
)


@pytest.mark.slow
def test_mypy_checks_task_signatures(tmp_path: Path) -> None:
    path = tmp_path / "typed_example.py"
    path.write_text(EXAMPLE)
    lines = run_mypy(path, tmp_path / "cache")
    # mypy versions differ on whether they print "builtins.int" or "int".
    reveals = [
        line.split("Revealed type is ")[1].strip('"').removeprefix("builtins.")
        for line in lines
        if "Revealed type is" in line
    ]
    assert reveals[:5] == ["int", "int", "str", "float", "str"], "\n".join(lines)
    shown = "\n".join(lines)
    assert reveals[5].startswith("asyncq.result.AsyncResult[") and reveals[5].endswith("int]"), shown
    assert reveals[6:] == ["int", "str", "list[Any]", "bool"], "\n".join(lines)
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == 4, "\n".join(lines)
    assert 'Argument 1 to "enqueue" of "Task" has incompatible type "str"; expected "int"' in errors[0]
    assert 'Missing positional argument "y"' in errors[1]
    assert 'Argument 1 to "delay" of "Task" has incompatible type "str"; expected "int"' in errors[2]
    assert 'Missing positional argument "y"' in errors[3]
