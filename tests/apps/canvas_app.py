"""The app the chord race test runs in several worker processes; URLs come from ASYNCQ_* env."""

from __future__ import annotations

import os

from asyncq import App

app = App("canvas-app")


@app.task
async def square(x: int) -> int:
    return x * x


@app.task
def record(values: list[int], path: str) -> int:
    """The chord callback: append one line per run to ``path``, so the test can count runs."""
    line = f"{os.getpid()} {len(values)} {sum(values)}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write with O_APPEND: lines from several processes never interleave
    finally:
        os.close(fd)
    return sum(values)
