"""docs/migrating-from-celery.md: every asyncq name its table gives exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

from typer.main import get_command

from asyncq.cli import cli
from asyncq.config import SETTINGS

DOC = Path(__file__).resolve().parents[2] / "docs" / "migrating-from-celery.md"


def _resolve(dotted: str) -> Any:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name)
        return found
    raise ImportError(dotted)


def _asyncq_names() -> list[str]:
    names = []
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and line.startswith("|") and not set(cells[1]) <= {"-"}:
            names += re.findall(r"`([^`]+)`", cells[1])
    return names


def test_every_asyncq_name_in_the_table_exists() -> None:
    names = _asyncq_names()
    assert len(names) > 40
    commands = set(getattr(get_command(cli), "commands", {}))
    assert "run" in commands
    for name in names:
        if name.startswith("app.conf."):
            assert name.removeprefix("app.conf.") in SETTINGS, name
        elif name.startswith("asyncq "):
            assert name.split()[1] in commands, name
        else:
            assert name.startswith("asyncq."), name
            assert _resolve(name) is not None, name
