"""docs/migrating-from-celery.md: every asyncq name its tables give exists.

The asyncq column holds, in backticks: a dotted ``asyncq.`` name; ``app.conf.<setting>``;
``@app.task(<option>=)``; ``apply_async(<option>=)``; ``event:<type>``; or an ``asyncq``
command with the flags it shows. *none* marks what asyncq does not have.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import click
from typer.main import get_command

from asyncq import Task
from asyncq.cli import cli
from asyncq.config import SETTINGS
from asyncq.events import EVENT_TYPES
from asyncq.task import TaskOptions

DOC = Path(__file__).resolve().parents[2] / "docs" / "migrating-from-celery.md"
SECTIONS = (
    "task options",
    "calling options",
    "settings",
    "signals",
    "canvas",
    "results",
    "command line",
    "flower",
)


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


def _rows() -> list[tuple[str, str, str]]:
    """(section, Celery cell, asyncq cell) of every table row."""
    rows, section = [], ""
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].split(" (")[0].strip().lower()
        if not line.startswith("|"):
            continue
        cells = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        assert len(cells) == 3, line
        if cells[0] != "Celery" and not set(cells[1]) <= {"-"}:
            rows.append((section, cells[0], cells[1]))
    return rows


def _check(name: str, commands: dict[str, click.Command]) -> None:
    if name.startswith("app.conf."):
        assert name.removeprefix("app.conf.") in SETTINGS, name
    elif name.startswith("@app.task("):
        option = name.removeprefix("@app.task(").removesuffix("=)")
        assert option in {field.name for field in dataclasses.fields(TaskOptions)}, name
    elif name.startswith("apply_async("):
        option = name.removeprefix("apply_async(").removesuffix("=)")
        assert option in inspect.signature(Task.apply_async).parameters, name
    elif name.startswith("event:"):
        assert name.removeprefix("event:") in EVENT_TYPES, name
    elif name.startswith("asyncq "):
        words = name.split()
        command = commands[words[1]]
        flags = {opt for param in command.params for opt in getattr(param, "opts", [])}
        for word in words[2:]:
            if word.startswith("-"):
                assert word in flags, f"{name}: {word}"
    else:
        assert name.startswith("asyncq."), name
        assert _resolve(name) is not None, name


def test_every_asyncq_name_in_the_tables_exists() -> None:
    rows = _rows()
    assert {section for section, _, _ in rows} >= set(SECTIONS)
    assert len(rows) > 100
    commands = dict(getattr(get_command(cli), "commands", {}))
    for section, celery, asyncq in rows:
        names = re.findall(r"`([^`]+)`", asyncq)
        assert names or asyncq == "*none*", f"{section}: {celery}: no asyncq name and not *none*"
        for name in names:
            _check(name, commands)
