from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from data_prepare.prepare import PrepareConfig, run
from segcore.networks.checkpoint import save_checkpoint
from segcore.store import CaseStore
from segcore.training.data import StoreDataset
from segcore.volumes import read_labels_on_grid, read_volume, write_volume
from segcore.volumes.geometry import to_canonical
from testkit import tiny_payload, write_tiny_weights

ROOT = Path(__file__).resolve().parents[2]
COARSE, FINE = [24, 28, 32], [32, 32, 40]


def tiny_config(data_root: Path, out: Path, workers: int = 1) -> PrepareConfig:
    return PrepareConfig(data_root=str(data_root), out=str(out), coarse_size=COARSE, fine_size=FINE, workers=workers)


def run_cli(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        ["sh", str(ROOT / "data_prepare" / "run.sh"), "--no-progress", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen,
    )  # fmt: skip


@pytest.fixture(scope="module")
def prepared(phantom_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "store.lmdb"
    report = run(tiny_config(phantom_root, out, workers=2), progress=False)
    assert not report.failed, report.summary()
    return phantom_root, CaseStore(out)


def test_every_case_stored_with_shapes_dtypes_and_splits(prepared):
    root, store = prepared
    assert len(store) == 6 + 3 + 2
    assert len(store.ids("labeled")) == 6 and len(store.ids("unlabeled")) == 3 and len(store.ids("test")) == 2
    for case_id in store.ids():
        meta, arrays = store.meta(case_id), store.arrays(case_id)
        assert arrays["coarse_image"].shape == tuple(COARSE) and arrays["coarse_image"].dtype == np.int16
        assert arrays["fine_image"].shape == tuple(FINE) and arrays["fine_image"].dtype == np.int16
        if meta["split"] == "labeled":
            assert arrays["coarse_label"].dtype == np.uint8 and arrays["fine_label"].shape == tuple(FINE)
            assert meta["crop_source"] == "labels"
        if meta["split"] == "unlabeled":
            assert "coarse_label" not in arrays and meta["crop_source"] == "body_heuristic"
        assert (root / meta["image_path"]).is_file()
    splits = store.splits()
    folded = sorted(case_id for fold in splits["folds"] for case_id in fold)
    assert folded == store.ids("labeled") and len(splits["folds"]) == 5
    assert splits["unlabeled"] == store.ids("unlabeled") and splits["test"] == store.ids("test")
    train, validation = store.fold(0)
    assert set(train).isdisjoint(validation) and sorted(train + validation) == folded


def test_crop_box_holds_every_labeled_voxel_and_organs_survive_resizing(prepared):
    root, store = prepared
    for case_id in store.ids("labeled"):
        meta, arrays = store.meta(case_id), store.arrays(case_id)
        image, geometry = read_volume(root / meta["image_path"])
        labels = read_labels_on_grid(root / meta["label_path"], geometry)
        (x0, x1), (y0, y1), (z0, z1) = meta["crop_box_original"]
        outside = labels.copy()
        outside[z0:z1, y0:y1, x0:x1] = 0
        assert not outside.any(), f"{case_id}: labeled voxels outside the crop box"
        assert sorted(meta["labels_present"]) == sorted(int(v) for v in np.unique(labels) if v)

        canonical_labels, _ = to_canonical(labels, geometry)
        box = meta["crop_box_canonical"]
        cropped = canonical_labels[tuple(slice(a, b) for a, b in box)]
        for key, source, size in (("coarse_label", canonical_labels, COARSE), ("fine_label", cropped, FINE)):
            cell = [int(np.ceil(s / t)) for s, t in zip(source.shape, size)]
            for organ in meta["labels_present"]:
                # The claim (segcore.volumes.resample): an organ holding a whole target-size cell survives.
                holds_cell = ndimage.binary_erosion(source == organ, np.ones(cell, bool)).any()
                if holds_cell:
                    assert (arrays[key] == organ).any(), f"{case_id}: organ {organ} lost in {key}"


def test_rerun_skips_and_force_redoes(phantom_root, tmp_path):
    config = tiny_config(phantom_root, tmp_path / "store")
    assert len(run(config, progress=False).stored) == 11
    again = run(config, progress=False)
    assert again.stored == [] and len(again.skipped) == 11
    assert len(run(config, force=True, progress=False).stored) == 11


def test_bad_cases_are_reported_and_the_rest_is_stored(phantom_root, tmp_path, real_data):
    root = tmp_path / "root"
    shutil.copytree(phantom_root, root)
    good = sorted(p.name for p in (root / "train_images").iterdir())
    # A truncated CT, a 4-D image, a missing mask, labels out of range, a label on another grid, a duplicate id.
    first = root / "train_images" / good[0]
    first.write_bytes(first.read_bytes()[:3000])
    shutil.copy(real_data / "mr_4d_oblique.nii.gz", root / "train_images" / "mr4d_0000.nii.gz")
    shutil.copy(real_data / "mr_4d_oblique.nii.gz", root / "train_mask" / "mr4d.nii.gz")
    (root / "train_mask" / good[1].replace("_0000", "")).unlink()
    mask_path = root / "train_mask" / good[2].replace("_0000", "")
    image, geometry = read_volume(root / "train_images" / good[2])
    labels = read_labels_on_grid(mask_path, geometry)
    labels[0, 0, 0] = 42
    write_volume(mask_path, labels, geometry)
    shifted = root / "train_mask" / good[3].replace("_0000", "")
    _, geometry3 = read_volume(root / "train_images" / good[3])
    write_volume(shifted, read_labels_on_grid(shifted, geometry3)[:, :, :-1], geometry3.__class__(
        size=(geometry3.size[0] - 1, *geometry3.size[1:]), spacing=geometry3.spacing,
        origin=geometry3.origin, direction=geometry3.direction))  # fmt: skip
    duplicate = sorted((root / "trainu_images").iterdir())[0]
    shutil.copy(duplicate, root / "val_images" / duplicate.name)

    process = run_cli("--data-root", str(root), "--out", str(tmp_path / "store"), "--workers", "2",
                      "coarse_size=[24,28,32]", "fine_size=[32,32,40]")  # fmt: skip
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 1, output
    failed = [line for line in output.splitlines() if line.strip().startswith("FAILED")]
    expected = {
        good[0].replace("_0000.nii.gz", ""): "truncated",
        "mr4d": "4-D image",
        good[1].replace("_0000.nii.gz", ""): "label file",
        good[2].replace("_0000.nii.gz", ""): "labels outside 0..13",
        good[3].replace("_0000.nii.gz", ""): "label grid differs",
        duplicate.name.replace("_0000.nii.gz", ""): "duplicate case id",
    }
    assert len(failed) == len(expected), output
    for case_id, reason in expected.items():
        line = next((line for line in failed if f"FAILED {case_id}:" in line), None)
        assert line is not None and reason in line, f"{case_id}: {line}\n{output}"
    store = CaseStore(tmp_path / "store")
    assert len(store) == 11 - 4 - 1  # four labeled cases broke; the duplicated id removes one unlabeled case
    assert "stored 6," in output


def store_content(path: Path) -> dict:
    store = CaseStore(path)
    content = {case_id: (store.meta(case_id), {k: np.array(v) for k, v in store.arrays(case_id).items()})
               for case_id in store.ids()}  # fmt: skip
    content["__splits__"] = store.splits()
    store.close()
    return content


def test_killed_run_then_rerun_equals_uninterrupted_run(phantom_root, tmp_path):
    args = ["--data-root", str(phantom_root), "--workers", "1", "coarse_size=[24,28,32]", "fine_size=[32,32,40]"]
    reference = run_cli(*args, "--out", str(tmp_path / "reference"))
    assert reference.wait(timeout=300) == 0, reference.stdout.read()

    interrupted = tmp_path / "interrupted"
    process = run_cli(*args, "--out", str(interrupted), start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (interrupted / "data.mdb").exists() and 0 < len(CaseStore(interrupted).ids()) < 11:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    stored_before = len(CaseStore(interrupted).ids())
    assert 0 < stored_before < 11, "the run was not interrupted midway"

    rerun = run_cli(*args, "--out", str(interrupted))
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert f"skipped {stored_before} " in output
    ours, theirs = store_content(interrupted), store_content(tmp_path / "reference")
    assert ours.keys() == theirs.keys()
    for key in ours:
        if key == "__splits__":
            assert ours[key] == theirs[key]
            continue
        assert ours[key][0] == theirs[key][0]
        for name, array in theirs[key][1].items():
            assert np.array_equal(ours[key][1][name], array), (key, name)


def test_reader_in_multiworker_dataloader(prepared):
    _, store = prepared
    ids = store.ids("labeled")
    dataset = StoreDataset(CaseStore(store.path), ids, "fine_image", "fine_label")
    loader = DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context="spawn")
    seen = 0
    for batch in loader:
        for image, label, index in zip(batch["image"], batch["label"], batch["index"]):
            arrays = store.arrays(ids[int(index)])
            assert torch.equal(image[0], torch.from_numpy(np.array(arrays["fine_image"])))
            assert torch.equal(label, torch.from_numpy(np.array(arrays["fine_label"])))
            seen += 1
    assert seen == len(ids)


def test_arrays_are_zero_copy_views(prepared):
    _, store = prepared
    array = store.arrays(store.ids()[0])["coarse_image"]
    assert not array.flags.writeable and not array.flags.owndata


def test_coarse_weights_crop_cases_without_labels(phantom_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(phantom_root / "trainu_images", root / "trainu_images")
    labeled = sorted((phantom_root / "train_images").iterdir())[0]
    (root / "train_images").mkdir()
    (root / "train_mask").mkdir()
    shutil.copy(labeled, root / "train_images" / labeled.name)
    mask_name = labeled.name.replace("_0000", "")
    shutil.copy(phantom_root / "train_mask" / mask_name, root / "train_mask" / mask_name)
    # The tiny coarse net is biased so that liver wins everywhere (see tests/tiny_checkpoints.py).
    weights = write_tiny_weights(tmp_path / "weights") / "coarse.pt"
    config = tiny_config(root, tmp_path / "store")
    config.coarse_weights = str(weights)
    first = run(config, progress=False)
    assert not first.failed and len(first.stored) == 4, first.summary()

    store = CaseStore(config.out)
    unlabeled = store.ids("unlabeled")
    assert len(unlabeled) == 3
    for case_id in unlabeled:
        meta = store.meta(case_id)
        assert meta["crop_source"] == "coarse_model" and meta["crop_note"] is None
        assert len(meta["coarse_weights_sha256"]) == 64
        for (start, stop), size in zip(meta["crop_box_canonical"], meta["canonical_shape"]):
            assert 0 <= start < stop <= size
        assert store.arrays(case_id)["fine_image"].shape == tuple(FINE)
    (labeled_id,) = store.ids("labeled")
    assert store.meta(labeled_id)["crop_source"] == "labels" and store.meta(labeled_id)["coarse_weights_sha256"] is None
    store.close()

    assert len(run(config, progress=False).skipped) == 4  # same weights: nothing to redo

    # Other weights redo the cases without labels only; this coarse net finds no organ: body outline instead.
    save_checkpoint(weights, tiny_payload("coarse", winner=0))
    second = run(config, progress=False)
    assert sorted(second.stored) == unlabeled and second.skipped == [labeled_id], second.summary()
    store = CaseStore(config.out)
    for case_id in unlabeled:
        meta = store.meta(case_id)
        assert meta["crop_source"] == "body_heuristic" and "found no organ" in meta["crop_note"]
    store.close()

    config.coarse_weights = str(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="coarse weights .*missing.pt"):
        run(config, progress=False)


def test_body_region_stores_the_trunk_alone_and_is_part_of_the_cases_hash(phantom_root, prepared, tmp_path):
    _, plain = prepared
    config = tiny_config(phantom_root, tmp_path / "store")
    config.body_region = True
    assert config.output_hash() != tiny_config(phantom_root, tmp_path / "other").output_hash()
    assert not run(config, progress=False).failed
    trunk = CaseStore(config.out)
    removed = 0
    for case_id in trunk.ids():
        mine, theirs = trunk.arrays(case_id)["coarse_image"], plain.arrays(case_id)["coarse_image"]
        assert (mine <= theirs).all()  # voxels only ever set to air (then resized: positive weights)
        removed += int(((theirs > -500) & (mine <= -500)).sum())
        if "coarse_label" in trunk.arrays(case_id):
            organs = np.asarray(trunk.arrays(case_id)["coarse_label"]) > 0
            np.testing.assert_array_equal(mine[organs], theirs[organs])
    trunk.close()
    assert removed > 0  # the phantoms' table, where it is in the field of view
