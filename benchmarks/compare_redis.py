"""``compare.py`` under its former name: ``python benchmarks/compare_redis.py [options]``.

Every option of ``compare.py`` works here (``--broker rabbitmq`` included); see its docstring.
"""

from __future__ import annotations

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).resolve().with_name("compare.py")), run_name="__main__")
