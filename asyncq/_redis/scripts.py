"""Lua scripts called by SHA (EVALSHA), their sources kept as ``.lua`` package resources."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

__all__ = ["Script", "load_lua", "script_call"]


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script called by SHA (EVALSHA), loaded again whenever Redis has forgotten it."""

    name: str
    source: str
    sha: str

    @classmethod
    def build(cls, name: str, source: str) -> Script:
        """Make a script, computing its SHA1 locally (what SCRIPT LOAD would return)."""
        return cls(name, source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


def load_lua(package: str, folder: str, name: str, *, prelude: Sequence[str] = ()) -> Script:
    """The script ``<folder>/<name>.lua`` of ``package``, after the ``prelude`` files (shared helpers)."""
    base = resources.files(package).joinpath(folder)
    source = "".join(base.joinpath(f"{part}.lua").read_text(encoding="utf-8") for part in (*prelude, name))
    return Script.build(name, source)


def script_call(script: Script, keys: Sequence[bytes], args: Sequence[Any]) -> tuple[Any, ...]:
    """The EVALSHA command that runs ``script`` (for :meth:`Client.pipeline`)."""
    return ("EVALSHA", script.sha, len(keys), *keys, *args)
