"""The layers of ARCHITECTURE.md, checked on every import of the repository's Python files."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LIBRARY_LAYERS = {
    "segcore.labels": 0, "segcore.config": 0, "segcore.runtime": 0,
    "segcore.volumes": 1,
    "segcore.store": 2, "segcore.networks": 2, "segcore.evaluate": 2, "segcore.phantom": 2,
    "segcore.inference": 3,
    "segcore.outputs": 4, "segcore.training": 4,
    "segcore.api": 5,
}  # fmt: skip
"""Each library package's floor: it imports only from floors below its own (and from itself)."""
APPLICATIONS = {"data_prepare", "coarse_seg", "fine_seg", "inference_server", "predict", "review"}
"""Programs on top of the library: they import the library (and the viewer's files), never one another."""
ASSETS = {"viewer"}
"""Static web files shared by the programs' pages; imported only for their folder, importing nothing."""
SUPPORT = {"testkit", "bench", "experiments"}
"""Test support, benchmarks and research experiments: on the library and the programs, never on the tests."""
OURS = {"segcore", "tests", *SUPPORT, *APPLICATIONS, *ASSETS}


def unit(module: str) -> str:
    """The package an import belongs to: ``segcore.<package>`` inside the library, else the top level."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "segcore" and len(parts) > 1 else parts[0]


def imports(root: Path = ROOT) -> dict[str, set[str]]:
    """Unit -> the other units its files import (absolute imports of this repository's modules)."""
    edges: dict[str, set[str]] = {}
    for top in sorted(OURS):
        for path in sorted((root / top).rglob("*.py")):
            source = unit(".".join(path.relative_to(root).with_suffix("").parts))
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    targets = [node.module]
                elif isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                else:
                    continue
                for target in targets:
                    if target.split(".")[0] in OURS and unit(target) != source:
                        edges.setdefault(source, set()).add(unit(target))
    return edges


def violations(edges: dict[str, set[str]]) -> list[str]:
    """Every import that breaks a layer rule, as ``"importer -> imported: why"``."""
    found = []
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            top = target.split(".")[0]
            if source in LIBRARY_LAYERS:
                if target not in LIBRARY_LAYERS:
                    found.append(f"{source} -> {target}: the library imports only the library")
                elif LIBRARY_LAYERS[target] >= LIBRARY_LAYERS[source]:
                    found.append(f"{source} -> {target}: not a lower floor")
            elif source == "segcore" and target != "segcore.api":
                found.append(f"{source} -> {target}: the package's own __init__ imports only the API (on first use)")
            elif source in APPLICATIONS and top not in ("segcore", *ASSETS):
                found.append(f"{source} -> {target}: an application imports only the library")
            elif source in ASSETS:
                found.append(f"{source} -> {target}: the shared web files import nothing")
            elif source in SUPPORT and top == "tests":
                found.append(f"{source} -> {target}: helpers shared with the tests live in testkit")
            elif source == "testkit" and top in SUPPORT:
                found.append(f"{source} -> {target}: the test kit stands on the library and the programs alone")
    return found


def test_every_library_package_has_a_floor():
    packages = {unit(f"segcore.{path.stem}") for path in (ROOT / "segcore").iterdir() if path.name != "__init__.py"}
    packages -= {"segcore.__pycache__"}
    assert packages == set(LIBRARY_LAYERS), packages ^ set(LIBRARY_LAYERS)


def test_no_import_goes_up_a_floor_and_no_application_or_test_is_imported_by_the_library():
    assert violations(imports()) == []


def test_the_rules_catch_each_kind_of_break():
    edges = {
        "segcore.volumes": {"segcore.inference", "segcore.labels"},  # up a floor; down is fine
        "segcore.store": {"segcore.networks"},  # same floor
        "segcore.inference": {"predict"},  # the library importing an application
        "inference_server": {"predict", "segcore.outputs"},  # one application importing another
        "bench": {"tests", "testkit"},  # a benchmark importing a test module; the kit is fine
        "experiments": {"bench", "tests"},  # an experiment may use a benchmark's code, not a test's
        "testkit": {"experiments", "segcore.phantom"},  # the kit importing an experiment
        "tests": {"bench", "segcore.volumes"},  # tests may import anything
        "review": {"viewer", "segcore.labels"},  # the shared web files are fine
        "viewer": {"segcore.labels"},  # the shared web files import nothing
    }
    assert violations(edges) == [
        "bench -> tests: helpers shared with the tests live in testkit",
        "experiments -> tests: helpers shared with the tests live in testkit",
        "inference_server -> predict: an application imports only the library",
        "segcore.inference -> predict: the library imports only the library",
        "segcore.store -> segcore.networks: not a lower floor",
        "segcore.volumes -> segcore.inference: not a lower floor",
        "testkit -> experiments: the test kit stands on the library and the programs alone",
        "viewer -> segcore.labels: the shared web files import nothing",
    ]
