"""Tasks for benchmarks/suspects.py, importable by reference from its sandbox children."""

from __future__ import annotations

import os

from asyncq import App

app = App("suspect-bench", broker="memory://")


@app.task(name="bench.noop")
async def noop(poison: bool = False) -> None:
    """Do nothing, or kill the process running it."""
    if poison:
        os._exit(1)
