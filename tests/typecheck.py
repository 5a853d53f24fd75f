"""Running mypy --strict on a generated example module, for the tests that check asyncq's types."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_mypy(path: Path, cache: Path) -> list[str]:
    """mypy's output lines for ``path``, checked strictly from the repository root."""
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(cache), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    return out.stdout.splitlines()
