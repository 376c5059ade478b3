"""The documentation: the MkDocs site builds with no warning, and the top-level pages' links lead somewhere.

``mkdocs build --strict`` fails on a broken link or anchor between pages, a page missing from the
navigation, a snippet file that is gone (``bench/README.md``, ``CHANGELOG.md``) and an API reference
(mkdocstrings) naming an object that no longer exists or a docstring griffe cannot read.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_PAGES = ("README.md", "ARCHITECTURE.md", "CHANGELOG.md", "bench/README.md", "model_weights/MODEL_CARD.md")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)")


def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "python-api" / "index.html").is_file()
    api = (tmp_path / "site" / "reference" / "python-api" / "index.html").read_text()
    assert "segcore.api.segment" in api  # the API reference was rendered from the docstrings


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 200, f"README.md has {lines} lines: move detail into docs/"


@pytest.mark.parametrize("page", TOP_PAGES)
def test_relative_links_of_the_top_level_pages_lead_to_files(page):
    path = ROOT / page
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # links in code blocks are examples
    broken = [
        target
        for target in LINK.findall(text)
        if "://" not in target and not target.startswith("mailto:") and not (path.parent / target).exists()
    ]
    assert not broken, f"{page}: links to missing files: {broken}"
