"""docs/protocol.md's Redis publish script is the one the broker runs."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_the_documented_publish_script_is_the_brokers() -> None:
    blocks = re.findall(r"```lua\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    lua = resources.files("asyncq.brokers").joinpath("redis_lua")
    script = "".join(
        lua.joinpath(f"{name}.lua").read_text(encoding="utf-8") for name in ("prelude", "publish")
    )
    assert blocks == [script]
