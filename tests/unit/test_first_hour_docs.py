"""The first-hour documents say what the code does: store path, links, drivers, license."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from asyncq.app import default_store_url
from asyncq.backends import BACKENDS
from asyncq.brokers import BROKERS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
TUTORIAL = ROOT / "docs" / "tutorial.md"
DEPLOYMENT = ROOT / "docs" / "deployment.md"
FIRST_HOUR_DOCS = [README, TUTORIAL, DEPLOYMENT]
# Products a reader might expect asyncq to drive, with the URL schemes a driver would register.
PRODUCTS = {
    "postgres": ("postgres", "postgresql"),
    "sqs": ("sqs",),
    "mongodb": ("mongodb",),
    "mysql": ("mysql",),
    "mariadb": ("mysql", "mariadb"),
    "kafka": ("kafka",),
}


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_anchor(m) for m in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}


def test_the_default_store_path_in_the_docs_is_the_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    documented = "~/.local/state/asyncq/myapp.sqlite3"
    assert default_store_url("myapp") == f"sqlite:///{Path(documented).expanduser()}"
    assert documented in README.read_text()
    assert "~/.local/state/asyncq/tutorial.sqlite3" in TUTORIAL.read_text()
    assert default_store_url("tutorial").endswith("/.local/state/asyncq/tutorial.sqlite3")


@pytest.mark.parametrize("doc", FIRST_HOUR_DOCS, ids=lambda p: p.name)
def test_relative_links_lead_somewhere(doc: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        assert path.exists(), f"{doc.name}: {target} does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{doc.name}: no heading for #{anchor} in {path.name}"


def test_the_tutorial_walks_through_the_existing_pages() -> None:
    text = TUTORIAL.read_text()
    steps = re.findall(r"^## \d+\. (.+)$", text, re.M)
    assert steps == [
        "Tasks",
        "A worker",
        "Sending tasks and reading results",
        "Failures and retries",
        "Workflows",
        "Periodic tasks",
        "Watching it run",
    ]
    for page in (
        "worker.md",
        "canvas.md",
        "scheduling.md",
        "configuration.md",
        "deployment.md",
        "protocol.md",
    ):
        assert f"]({page}" in text, page
    assert "docs/tutorial.md" in README.read_text()


def test_docs_and_messages_mention_only_drivers_that_exist() -> None:
    schemes = set(BROKERS) | set(BACKENDS)
    sources = [README, *(ROOT / "docs").rglob("*.md"), *(ROOT / "asyncq").rglob("*.py")]
    for product, product_schemes in PRODUCTS.items():
        if schemes & set(product_schemes):
            continue  # a driver exists: mentioning it is fine
        for path in sources:
            text = path.read_text().lower()
            assert product not in text, f"{path.relative_to(ROOT)} mentions {product}, which has no driver"


def test_the_license_file_matches_pyproject() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Permission is hereby granted, free of charge" in text


def test_there_is_a_changelog_with_an_unreleased_section() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    assert "## [0.1.0]" in text


def test_the_readme_shows_a_user_install_and_calls_async_tasks_rightly() -> None:
    text = README.read_text()
    assert "pip install 'asyncq[redis]'" in text
    assert "await add(2, 3)" in text
    assert not re.search(r"^add\(2, 3\)", text, re.M)  # un-awaited: a coroutine, not 5
    assert "app.send_task(" in text
    assert "crontab.from_string(" in text
    assert 'if __name__ == "__main__":' in text  # the spawn requirement of process tasks


def test_the_deployment_logging_example_runs() -> None:
    (block,) = [
        b for b in re.findall(r"```python\n(.*?)```", DEPLOYMENT.read_text(), re.S) if "dictConfig" in b
    ]
    script = block + "\nimport logging\nlogging.getLogger('x').warning('configured')\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert '"message": "configured"' in out.stderr
