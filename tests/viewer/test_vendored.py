"""The vendored NiiVue is the file viewer/README.md names, and the pages load nothing from elsewhere."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from viewer import STATIC

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "inference_server" / "static", ROOT / "review" / "static", STATIC]


def test_the_vendored_file_matches_the_version_size_and_hash_the_readme_states():
    readme = (ROOT / "viewer" / "README.md").read_text()
    library = STATIC / "niivue" / "niivue.umd.js"
    stated_hash = re.search(r"\| sha256 \| `([0-9a-f]{64})` \|", readme).group(1)
    stated_size = int(re.search(r"\| size \| (\d+) bytes", readme).group(1))
    stated_version = re.search(r"\| version \| ([0-9.]+) \|", readme).group(1)
    data = library.read_bytes()
    assert len(data) == stated_size
    assert hashlib.sha256(data).hexdigest() == stated_hash
    assert f'version:"{stated_version}"' in data.decode()  # the build names its own release
    assert "BSD 2-Clause License" in (STATIC / "niivue" / "LICENSE").read_text()


def test_the_pages_own_code_names_no_other_origin():
    own = [
        p
        for folder in PAGES
        for p in folder.rglob("*")
        if p.suffix in (".html", ".js", ".css") and "niivue" not in p.parts
    ]
    assert len(own) >= 7, own
    for path in own:
        text = path.read_text()
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), path
        assert 'fetch("http' not in text and "fetch('http" not in text, path
