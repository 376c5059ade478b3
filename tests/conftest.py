"""Shared fixtures: the real CT files and tiny synthetic volumes written to a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from segcore.volumes import write_volume
from segcore.volumes.geometry import Geometry
from testkit import REAL_DATA


def pytest_configure(config) -> None:
    """Under pytest-xdist, each worker gets its share of the cores (torch would otherwise start one
    thread per core in every worker, and in every process a test starts: 2 workers on 2 cores would
    run 4 threads that only fight each other)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        threads = max(1, (os.cpu_count() or 1) // int(workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder of the real CT files (see its README)."""
    if not REAL_DATA.is_dir():
        pytest.fail(f"real test data not found at {REAL_DATA}; the repository must sit next to shared/")
    return REAL_DATA


def make_geometry(shape_zyx, spacing=(1.0, 1.0, 2.0), origin=(-10.0, 20.0, -30.0), direction=None) -> Geometry:
    """A geometry for a ``(z, y, x)`` shape; spacing and origin in ITK (x, y, z) order."""
    direction = tuple(np.eye(3).ravel()) if direction is None else tuple(np.asarray(direction, float).ravel())
    return Geometry(
        size=(shape_zyx[2], shape_zyx[1], shape_zyx[0]),
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in origin),
        direction=direction,
    )


@pytest.fixture
def write_ct(tmp_path):
    """Write a tiny CT-like int16 volume; returns its path."""

    def write(name: str, shape_zyx=(12, 16, 20), direction=None, seed: int = 0, **geometry) -> Path:
        rng = np.random.default_rng(seed)
        array = rng.integers(-1000, 400, size=shape_zyx).astype(np.int16)
        path = tmp_path / name
        write_volume(path, array, make_geometry(shape_zyx, direction=direction, **geometry))
        return path

    return write


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A tiny FLARE22-layout data root of small phantoms: 6 labeled, 3 unlabeled, 2 validation cases."""
    from segcore.phantom import write_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(root, labeled=6, unlabeled=3, val=2, size="small", seed=11)
    return root


@pytest.fixture(scope="session")
def tiny_store(phantom_root, tmp_path_factory) -> Path:
    """The phantoms prepared with ``data_prepare/config.tiny.yaml`` (the sizes the tiny training configs expect)."""
    from data_prepare.prepare import PrepareConfig, run
    from segcore.config import load_config

    settings = load_config(Path(__file__).resolve().parents[1] / "data_prepare" / "config.tiny.yaml")
    out = tmp_path_factory.mktemp("tiny_store") / "store.lmdb"
    settings.update(data_root=str(phantom_root), out=str(out), workers=2)
    report = run(PrepareConfig(**settings), progress=False)
    assert not report.failed, report.summary()
    return out


@pytest.fixture(scope="session")
def series_with_uids(real_data, tmp_path_factory):
    """The shared series (which lacks study, series and SOP UIDs) as a PACS would export it."""
    import pydicom
    from pydicom.uid import generate_uid

    folder = tmp_path_factory.mktemp("series")
    study, series = generate_uid(), generate_uid()
    for path in sorted((real_data / "abdomen_ct_dicom").iterdir()):
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID
        dataset.PatientID = "anonymous"
        dataset.save_as(folder / path.name)
    return folder
