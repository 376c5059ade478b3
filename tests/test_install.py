"""The package installs and works away from the repository.

A wheel is built from a copy of the files ``pyproject.toml`` packages (so the build leaves nothing in
the checkout) and installed into a fresh virtual environment in a temporary folder. That environment
takes its dependencies from the one running the tests (a ``.pth`` line naming its site-packages:
nothing is downloaded and nothing else is installed), while every file of this project comes from
the wheel; the commands run from a folder outside the checkout with no ``PYTHONPATH``, so the
checkout cannot be imported. ``segcore-predict`` then segments a small phantom CT with the default
weights shipped as package data, and so does ``segcore.segment`` from the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from segcore.phantom import generate_case
from segcore.volumes import read_label_map, read_volume, write_volume

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parents[1]
PIP = (sys.executable, "-m", "pip", "--quiet")
"""The pip of the environment running the tests (``--python`` points it at another environment)."""
COMMANDS = tuple(
    f"segcore-{name}" for name in ("predict", "serve", "review", "prepare", "train", "evaluate", "export-labels")
)

INSPECT = """
import importlib.metadata, json
from pathlib import Path
import coarse_seg.train, data_prepare.__main__, fine_seg.train, inference_server.app, model_weights, predict.batch
import review.app, segcore.runtime.launch, viewer
from segcore.inference.predictor import DEFAULT_WEIGHTS_DIR
entries = importlib.metadata.distribution("segcore").entry_points
configs = [Path(m.__file__).with_name("config.yaml") for m in (coarse_seg.train, fine_seg.train, data_prepare.__main__)]
files = [
    *(DEFAULT_WEIGHTS_DIR / name for name in ("coarse.pt", "fine.pt", "MODEL_CARD.md")), *configs,
    inference_server.app.STATIC / "index.html", review.app.STATIC / "index.html",
    viewer.STATIC / "viewer.js", viewer.STATIC / "niivue" / "niivue.umd.js", segcore.runtime.launch.LAUNCH_SH,
]
modules = [model_weights, predict.batch, inference_server.app, review.app, viewer, segcore.runtime.launch]
print(json.dumps({
    "scripts": [entry.name for entry in entries if entry.group == "console_scripts"],
    "files": [str(path) for path in files],
    "modules": [module.__file__ for module in modules],
}))
"""


def run(*command: str | Path, cwd: Path, env: dict[str, str]) -> str:
    """Run a command to its end; it must succeed. Returns its standard output."""
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def project_sources(destination: Path) -> Path:
    """Copy what the build reads: pyproject.toml, its readme and licence files, and the packages it finds."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = config["project"]
    tops = {pattern.rstrip("*").rstrip(".") for pattern in config["tool"]["setuptools"]["packages"]["find"]["include"]}
    for name in ["pyproject.toml", project["readme"], *project["license-files"]]:
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, destination / name)
    for top in sorted(tops):
        shutil.copytree(ROOT / top, destination / top, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A fresh environment with the wheel installed: its ``bin`` folder, ``site-packages``, environment
    variables (no ``PYTHONPATH``, no package index) and a work folder outside the checkout."""
    base = tmp_path_factory.mktemp("install")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"PIP_NO_INDEX": "1"}
    wheels, venv = base / "wheels", base / "venv"
    source = project_sources(base / "source")
    run(*PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source, cwd=base, env=env)
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=base, env=env)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(run(python, "-c", purelib, cwd=base, env=env).strip())
    # The dependencies are those of the environment running the tests, after the venv's own site-packages.
    dependencies = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (site / "test_dependencies.pth").write_text("".join(f"{path}\n" for path in dependencies))
    wheel = next(wheels.glob("segcore-*.whl"))
    run(*PIP, "--python", python, "install", "--no-deps", wheel, cwd=base, env=env)
    (base / "work").mkdir()
    return {"bin": venv / "bin", "site": site, "env": env, "work": base / "work"}


def test_the_installed_package_holds_its_commands_and_data_files(installed):
    for command in COMMANDS:
        assert (installed["bin"] / command).is_file(), command
    found = json.loads(run(installed["bin"] / "python", "-c", INSPECT, cwd=installed["work"], env=installed["env"]))
    assert sorted(found["scripts"]) == sorted(COMMANDS)
    for module in found["modules"]:
        assert Path(module).is_relative_to(installed["site"]), f"{module} is not the installed copy"
    for path in found["files"]:
        assert Path(path).is_relative_to(installed["site"]) and Path(path).is_file(), path
    command = [installed["bin"] / "segcore-train", "middle"]
    train = subprocess.run(command, cwd=installed["work"], env=installed["env"], capture_output=True, text=True)
    assert train.returncode == 2 and "coarse or fine" in train.stderr


def test_segcore_predict_writes_a_mask_on_the_input_grid(installed):
    work = installed["work"]
    phantom = generate_case(11, size="small", full_field=True)
    write_volume(work / "ct" / "phantom_0000.nii.gz", phantom.image, phantom.geometry)
    command = [installed["bin"] / "segcore-predict", "-i", "ct", "-o", "masks", "--device", "cpu", "--no-progress"]
    output = run(*command, cwd=work, env=installed["env"])
    assert "NOTE on these weights" in output  # the shipped default model was found and loaded
    labels, mask_geometry = read_label_map(work / "masks" / "phantom.nii.gz")
    _, image_geometry = read_volume(work / "ct" / "phantom_0000.nii.gz")
    assert mask_geometry.size == image_geometry.size
    for field in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(mask_geometry, field), getattr(image_geometry, field), atol=1e-4)
    assert labels.shape == phantom.image.shape and np.count_nonzero(labels) > 0


def test_the_sample_of_an_installed_package_is_written_in_the_current_folder(installed):
    work = installed["work"] / "sample_run"
    work.mkdir()
    output = run(installed["bin"] / "segcore-predict", "--device", "cpu", cwd=work, env=installed["env"])
    assert "mean DSC" in output
    assert (work / "segcore-sample" / "predictions" / "sample.nii.gz").is_file()
    assert not (installed["site"] / "dataset").exists()  # nothing written into site-packages


def test_the_installed_python_api_segments_a_file(installed):
    work = installed["work"] / "api_run"
    work.mkdir()
    phantom = generate_case(12, size="small", full_field=True)
    write_volume(work / "ct_0000.nii.gz", phantom.image, phantom.geometry)
    code = (
        "import segcore, sys; r = segcore.segment('ct_0000.nii.gz', 'mask.nii.gz', device='cpu'); "
        "assert segcore.__file__.startswith(sys.argv[1]), segcore.__file__; "
        "print(r.verdict, len(r.record.organs))"
    )
    verdict, organs = run(
        installed["bin"] / "python", "-c", code, installed["site"], cwd=work, env=installed["env"]
    ).split()
    assert verdict in ("ok", "review", "fail") and int(organs) > 0
    labels, geometry = read_label_map(work / "mask.nii.gz")
    assert labels.shape == phantom.image.shape and geometry.size == read_volume(work / "ct_0000.nii.gz")[1].size
