from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from segcore.evaluate import evaluate_folders, main
from segcore.evaluate.metrics import (
    NSD_MIN_DSC,
    TOLERANCE_MM,
    Z_RANGE_ORGANS,
    score_case,
    surface_area_table,
    surface_dice,
)
from segcore.labels import ORGANS
from segcore.volumes import VolumeError, read_volume, write_volume
from tests.conftest import make_geometry

REPO = Path(__file__).resolve().parents[3]
REAL_LABELS = ["abdomen_ct_3mm_labels.nii.gz", "abdomen_ct_dicom_labels.nii.gz"]
BALL = ndimage.generate_binary_structure(3, 1)
# MONAI's surface distance helper warns about one of its own deprecated arguments.
ignore_monai_deprecation = pytest.mark.filterwarnings("ignore::FutureWarning")


def perturbed(gt: np.ndarray) -> np.ndarray:
    """A prediction that differs from ``gt`` in a different way for each organ."""
    pred = gt.copy()
    pred[ndimage.binary_dilation(gt == 1, BALL, iterations=3) & (gt == 0)] = 1
    pred[(gt == 3) & ~ndimage.binary_erosion(gt == 3, BALL, iterations=2)] = 0
    pred[gt == 4] = 0
    pred[np.roll(gt == 4, 3, axis=2) & (pred == 0)] = 4
    pred[np.roll(gt == 5, 2, axis=1) & (pred == 0)] = 5
    pred[ndimage.binary_dilation(gt == 6, BALL, iterations=2) & (gt == 0)] = 6
    pred[gt == 7] = 0  # organ dropped
    stomach_edge = (gt == 11) & ~ndimage.binary_erosion(gt == 11, BALL)
    pred[stomach_edge & (np.random.default_rng(0).random(gt.shape) < 0.5)] = 0
    pred[np.roll(gt == 12, 1, axis=0) & (pred == 0)] = 12
    return pred


def one_hot(labels: np.ndarray, organs: list[int]) -> torch.Tensor:
    """(1, C, z, y, x) one-hot tensor of the given organs."""
    return torch.from_numpy(np.stack([labels == organ for organ in organs])[None])


def monai_scores(gt: np.ndarray, pred: np.ndarray, organs: list[int], spacing_zyx) -> tuple[np.ndarray, np.ndarray]:
    """MONAI's Dice and DeepMind-style surface Dice (``use_subvoxels``) per organ."""
    import monai.metrics as monai_metrics

    y_pred, y = one_hot(pred, organs), one_hot(gt, organs)
    dsc = monai_metrics.compute_dice(y_pred, y, include_background=True)[0].numpy()
    nsd = monai_metrics.compute_surface_dice(
        y_pred,
        y,
        [TOLERANCE_MM[organ] for organ in organs],
        include_background=True,
        spacing=list(spacing_zyx),
        use_subvoxels=True,
    )[0].numpy()
    return dsc, nsd


@pytest.fixture(scope="module", params=REAL_LABELS)
def real_case(request, real_data):
    gt, geometry = read_volume(real_data / request.param, check_ct=False)
    gt = gt.astype(np.uint8)
    return gt, perturbed(gt), geometry.spacing_zyx


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.8, 0.7), (0.5, 5.0, 1.3)])
def test_surface_area_table_matches_monai_for_all_256_codes(spacing):
    import monai.metrics.utils as monai_utils

    expected = monai_utils.create_table_neighbour_code_to_surface_area(spacing)[0].numpy()
    np.testing.assert_allclose(surface_area_table(spacing), expected, rtol=1e-6)


@ignore_monai_deprecation
def test_surface_dice_agrees_with_monai_on_real_labels(real_case):
    gt, pred, spacing = real_case
    organs = [organ for organ in ORGANS if (gt == organ).any() and (pred == organ).any()]
    _, expected = monai_scores(gt, pred, organs, spacing)
    mine = [surface_dice(gt == organ, pred == organ, spacing, TOLERANCE_MM[organ]) for organ in organs]
    np.testing.assert_allclose(mine, expected, atol=1e-4)
    assert any(0.2 < value < 0.95 for value in mine), "perturbations too weak to test anything"


@ignore_monai_deprecation
def test_flare_protocol_agrees_with_monai_on_real_labels(real_case):
    gt, pred, spacing = real_case
    scores = score_case(gt, pred, spacing)
    compared = 0
    for organ in ORGANS:
        if not (gt == organ).any() or not (pred == organ).any():
            continue
        gt_scored, pred_scored = gt, pred
        if organ in Z_RANGE_ORGANS:  # the same crop for MONAI: gt slices, last one excluded
            slices = np.flatnonzero((gt == organ).any(axis=(1, 2)))
            gt_scored, pred_scored = gt[slices[0] : slices[-1]], pred[slices[0] : slices[-1]]
        dsc, nsd = monai_scores(gt_scored, pred_scored, [organ], spacing)
        assert scores[organ].dsc == pytest.approx(dsc[0], abs=1e-4), ORGANS[organ]
        assert scores[organ].nsd == pytest.approx(nsd[0], abs=1e-4), ORGANS[organ]  # no DSC rule: the script's
        compared += 1
    assert compared >= 6
    assert scores[7].dsc == scores[7].nsd == 0.0  # dropped organ


def blob_case(shape=(10, 12, 12)):
    return np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)


def test_empty_organ_rules():
    gt, pred = blob_case()
    gt[2:5, 2:5, 2:5] = 1  # liver in gt only
    pred[0:2, 9:11, 9:11] = 3  # spleen in prediction only
    gt[6:9, 6:9, 6:9] = 9
    pred[6:9, 6:9, 6:9] = 9  # gallbladder identical
    scores = score_case(gt, pred, (2.0, 1.0, 1.0))
    assert (scores[1].dsc, scores[1].nsd) == (0.0, 0.0)
    assert (scores[3].dsc, scores[3].nsd) == (0.0, 0.0)
    assert (scores[9].dsc, scores[9].nsd) == (1.0, 1.0)
    for organ in set(ORGANS) - {1, 3, 9}:  # absent from both
        assert (scores[organ].dsc, scores[organ].nsd) == (1.0, 1.0)


def test_nsd_is_kept_at_low_dsc_as_in_the_official_script_and_zeroed_only_on_request():
    gt, pred = blob_case()
    gt[2:5, 2:5, 2:5] = 4  # 27 voxels
    pred[4:7, 4:7, 4:7] = 4  # overlaps in one voxel: DSC = 2 / 54
    spacing = (1.0, 1.0, 1.0)
    close = surface_dice(gt == 4, pred == 4, spacing, TOLERANCE_MM[4])
    assert close > 0.5  # surfaces are close
    official = score_case(gt, pred, spacing)[4]
    assert official.dsc == pytest.approx(2 / 54) and official.nsd == pytest.approx(close)
    ruled = score_case(gt, pred, spacing, nsd_min_dsc=NSD_MIN_DSC)[4]
    assert ruled.dsc == official.dsc and ruled.nsd == 0.0


def test_one_voxel_shift_within_tolerance_has_full_surface_dice():
    gt, pred = blob_case()
    gt[2:6, 3:7, 3:8] = 1
    pred[3:7, 3:7, 3:8] = 1  # shifted by one slice of 2 mm
    assert surface_dice(gt == 1, pred == 1, (2.0, 1.0, 1.0), 2.0) == 1.0
    assert surface_dice(gt == 1, pred == 1, (2.0, 1.0, 1.0), 1.9) < 1.0


@pytest.mark.parametrize("organ", sorted(Z_RANGE_ORGANS))
def test_z_range_organs_are_scored_on_gt_slices_without_the_last(organ):
    gt, pred = blob_case()
    gt[2:6, 4:6, 4:6] = organ  # slices 2..5, 4 voxels each
    pred[0:8, 4:6, 4:6] = organ  # extends beyond the gt's slices...
    pred[3] = 0  # ...and misses slice 3
    # Scored slices are 2, 3, 4 (the official bound excludes the last gt slice, 5):
    # gt 12 voxels, prediction 8 (slices 2 and 4), overlap 8 -> DSC 16 / 20.
    # (Every slice would give 24 / 44; slices 2..5 inclusive 24 / 28.)
    # On those slices every surface corner of one mask lies within 1 mm of the other's
    # surface, inside the tolerance (2 or 3 mm), so NSD is 1.
    score = score_case(gt, pred, (1.0, 1.0, 1.0))[organ]
    assert score.dsc == pytest.approx(0.8)
    assert score.nsd == pytest.approx(1.0)
    as_liver = score_case(np.where(gt > 0, 1, 0), np.where(pred > 0, 1, 0), (1.0, 1.0, 1.0))[1]
    assert as_liver.dsc == pytest.approx(24 / 44)  # not a z-range organ: every slice scored


def write_case(folder: Path, name: str, labels: np.ndarray, **geometry) -> Path:
    path = folder / name
    write_volume(path, labels, make_geometry(labels.shape, **geometry))
    return path


@pytest.fixture
def folders(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    first, _ = blob_case()
    first[2:6, 2:8, 2:8] = 1
    first[6:9, 3:6, 3:6] = 3
    second = np.zeros_like(first)
    second[3:7, 4:9, 4:9] = 2
    write_case(gt_dir, "case_a.nii.gz", first)
    write_case(gt_dir, "case_b.nii.gz", second)
    write_case(pred_dir, "case_a.nii.gz", first)  # perfect
    shifted = np.roll(second, 1, axis=2)
    write_case(pred_dir, "case_b_0000.nii.gz", shifted)  # channel suffix dropped when pairing
    return gt_dir, pred_dir


def test_cli_writes_a_csv_row_per_case_and_a_mean(folders, tmp_path):
    gt_dir, pred_dir = folders
    out = tmp_path / "scores.csv"
    done = subprocess.run(
        [sys.executable, "-m", "segcore.evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--csv", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "liver" in done.stdout and "mean" in done.stdout
    with open(out, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["case"] for row in rows] == ["case_a", "case_b", "mean"]
    assert list(rows[0])[:3] == ["case", "liver_DSC", "liver_NSD"]
    assert float(rows[0]["liver_DSC"]) == 1.0 and float(rows[0]["spleen_NSD"]) == 1.0
    assert float(rows[1]["right_kidney_DSC"]) == pytest.approx(2 * 80 / 200, abs=1e-4)  # 4x5x5 box shifted by 1
    mean_liver = (float(rows[0]["liver_DSC"]) + float(rows[1]["liver_DSC"])) / 2
    assert float(rows[2]["liver_DSC"]) == pytest.approx(mean_liver, abs=1e-4)


def test_missing_prediction_is_scored_as_empty_and_reported(folders, capsys):
    gt_dir, pred_dir = folders
    (pred_dir / "case_b_0000.nii.gz").unlink()
    write_case(pred_dir, "stray.nii.gz", np.zeros((10, 12, 12), np.uint8))
    evaluation = evaluate_folders(pred_dir, gt_dir, progress=False)
    assert evaluation.missing_predictions == ["case_b"]
    assert evaluation.unmatched_predictions == ["stray"]
    case_b = evaluation.cases[1]
    assert case_b.prediction_missing
    assert case_b.organs[2].dsc == case_b.organs[2].nsd == 0.0  # in gt, not predicted
    assert case_b.organs[1].dsc == case_b.organs[1].nsd == 1.0  # absent from both
    assert main(["--pred", str(pred_dir), "--gt", str(gt_dir)]) == 0
    assert "scored as empty masks" in capsys.readouterr().out


def test_prediction_on_another_grid_is_refused_naming_the_file(folders, capsys):
    gt_dir, pred_dir = folders
    bad = write_case(pred_dir, "case_a.nii.gz", np.zeros((10, 12, 12), np.uint8), spacing=(1.0, 1.0, 3.0))
    with pytest.raises(VolumeError, match="grid differs from the ground truth") as error:
        evaluate_folders(pred_dir, gt_dir, progress=False)
    assert str(bad) in str(error.value) and "spacing" in str(error.value)
    assert main(["--pred", str(pred_dir), "--gt", str(gt_dir)]) == 1
    assert str(bad) in capsys.readouterr().err


def test_evaluate_cli_follows_the_script_unless_asked_for_the_dsc_rule(tmp_path, capsys):
    from segcore.evaluate import main
    from segcore.volumes import write_volume
    from segcore.volumes.geometry import Geometry

    gt, pred = blob_case()
    gt[2:5, 2:5, 2:5] = 4
    pred[4:7, 4:7, 4:7] = 4  # DSC 2/54, surfaces close
    geometry = Geometry(size=(12, 12, 10), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3).ravel())
    for folder, array in (("gt", gt), ("pred", pred)):
        (tmp_path / folder).mkdir()
        write_volume(tmp_path / folder / "case.nii.gz", array, geometry)
    rows = {}
    for extra in ([], ["--nsd-min-dsc", "0.2"]):
        assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), *extra]) == 0
        table = capsys.readouterr().out
        rows[bool(extra)] = next(line.split() for line in table.splitlines() if line.startswith("pancreas"))
    assert float(rows[False][-1]) > 0.5 and float(rows[True][-1]) == 0.0  # the NSD column
    assert rows[False][-2] == rows[True][-2]  # the DSC column
