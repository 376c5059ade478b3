"""The console scripts: a missing extra is named with its install line, before any import fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from segcore.runtime import commands

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
ROOT = Path(__file__).resolve().parents[3]

# Runs a console-script function with one module of an extra made unimportable (None in sys.modules).
BLOCKED = """
import sys
sys.modules[{module!r}] = None
import importlib.util
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == {module!r} else real(name, *a)
sys.argv = [{command!r}, "--help"]
from segcore.runtime import commands
sys.exit(commands.{function}())
"""


@pytest.mark.parametrize(
    ("function", "command", "module", "extra"),
    [
        ("serve", "segcore-serve", "fastapi", "serve"),
        ("review", "segcore-review", "uvicorn", "serve"),
        ("prepare", "segcore-prepare", "lmdb", "train"),
        ("train", "segcore-train", "tensorboard", "train"),
    ],
)
def test_a_command_without_its_extra_names_it_and_how_to_install_it(function, command, module, extra):
    code = BLOCKED.format(module=module, command=command, function=function)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 1, result.stderr
    assert f"{command}: this command needs the [{extra}] extra; missing: {module}" in result.stderr
    assert f"pip install 'segcore[{extra}]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_with_the_extra_installed_the_command_runs_its_program():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.argv = ['segcore-serve', '--help']\n"
            "from segcore.runtime import commands; commands.serve()",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0 and "--weights" in result.stdout, result.stderr


def test_every_console_script_is_a_command_and_every_extra_module_is_in_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for name, target in project["scripts"].items():
        module, function = target.split(":")
        assert module == "segcore.runtime.commands" and callable(getattr(commands, function)), name
    for extra, modules in commands.EXTRAS.items():
        assert extra in project["optional-dependencies"]
        assert not commands.missing_modules(extra), f"the test environment lacks part of [{extra}]"
        assert len(modules) <= len(project["optional-dependencies"][extra])
