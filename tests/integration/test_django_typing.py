"""``enqueue_on_commit`` is typed like the task it sends: mypy rejects wrong arguments."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.typecheck import run_mypy

EXAMPLE = textwrap.dedent(
    """
    from asyncq import App
    from asyncq.contrib.django import enqueue_on_commit

    app = App("typed", broker="memory://")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    reveal_type(enqueue_on_commit(add, 1, 2).get())
    enqueue_on_commit(add, "a", 2)  # E: wrong argument type
    enqueue_on_commit(add, 1)  # E: missing argument
    """
)


@pytest.mark.slow
def test_mypy_checks_enqueue_on_commit_arguments(tmp_path: Path) -> None:
    path = tmp_path / "typed_on_commit.py"
    path.write_text(EXAMPLE)
    lines = run_mypy(path, tmp_path / "c")
    reveals = [line.split("Revealed type is ")[1].strip('"') for line in lines if "Revealed type is" in line]
    assert [r.removeprefix("builtins.") for r in reveals] == ["int"], "\n".join(lines)
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == 2, "\n".join(lines)
    # One overload per kind of task (asyncq's, Django's): mypy names the arguments none accepts.
    assert (
        'No overload variant of "enqueue_on_commit" matches argument types "SyncTask[[int, int], int]", "str"'
        in (errors[0])
    )
    assert (
        'No overload variant of "enqueue_on_commit" matches argument types "SyncTask[[int, int], int]", "int"'
        in (errors[1])
    )
