"""The docs list what the code has."""

from __future__ import annotations

from pathlib import Path

import asyncq
from asyncq.config import settings_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_configuration_doc_lists_every_setting() -> None:
    assert settings_markdown() in (DOCS / "configuration.md").read_text(), (
        "docs/configuration.md is out of date: paste asyncq.config.settings_markdown() into it"
    )


def test_public_api_is_sorted_and_importable() -> None:
    assert asyncq.__all__ == sorted(asyncq.__all__)
    for name in asyncq.__all__:
        assert hasattr(asyncq, name), name
