"""The detailed anatomy (``generate_case(detailed=True)``): each anatomical rule as a property of
many generated patients, measured on the organs' final shapes sampled on a fine grid."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import ndimage

from segcore.labels import ORGAN_IDS
from segcore.phantom import case_id, case_seed, generate_case, write_dataset
from segcore.phantom.__main__ import main as phantom_cli
from segcore.phantom.anatomy import build_anatomy
from segcore.phantom.dataset import is_detailed
from segcore.phantom.detailed import COLLAPSED_SHARE, bladder, bowel_detail
from segcore.phantom.patient import SPINE_SETBACK_MM, detailed_habitus, sample_patient, spine_setback
from segcore.phantom.shapes import Grid
from segcore.phantom.tissues import Tissue
from segcore.volumes import read_volume

SEEDS = range(24)
STEP_MM = 1.5


def _patient_and_anatomy(seed: int, detailed: bool = True):
    patient = sample_patient(np.random.default_rng([seed, 0]))
    if detailed:
        patient = detailed_habitus(patient, np.random.default_rng([seed, 1]))
    detail = np.random.default_rng([seed, 2]) if detailed else None
    organs, vessels = build_anatomy(patient, np.random.default_rng([seed, 3]), detail=detail)
    return patient, {organ.name: organ.shape for organ in organs}, vessels


def _grid(low, high) -> Grid:
    axes = [np.arange(lo, hi + STEP_MM, STEP_MM, dtype=np.float32) for lo, hi in zip(low, high)]
    return Grid(axes[0], axes[1], axes[2], (STEP_MM,) * 3)


def _masks(shapes: dict, grid: Grid) -> dict[str, np.ndarray]:
    """Each shape's voxels on ``grid`` (``(z, y, x)`` bool), the grid's axes in the patient frame."""
    return {name: shape.field_in(grid.whole) <= 0 for name, shape in shapes.items()}


def _retroperitoneum(seed: int):
    patient, organs, vessels = _patient_and_anatomy(seed)
    crura = [vessel.shape for vessel in vessels if vessel.first]
    assert len(crura) == 2 and all(vessel.tissue == Tissue.MUSCLE for vessel in vessels if vessel.first)
    pitch = patient.pitch
    grid = _grid((-90.0, patient.spine_y - 110.0, -4.0 * pitch), (90.0, patient.spine_y + 10.0, 3.0 * pitch))
    names = ("aorta", "ivc", "right_adrenal_gland", "left_adrenal_gland", "right_kidney", "left_kidney")
    masks = _masks({name: organs[name] for name in names} | {"right_crus": crura[0], "left_crus": crura[1]}, grid)
    return patient, grid, masks


def _slice_centre(mask: np.ndarray, grid: Grid, z: float) -> tuple[float, float] | None:
    index = int(np.argmin(np.abs(grid.z - z)))
    ys, xs = np.nonzero(mask[index])
    return None if ys.size == 0 else (float(grid.x[xs].mean()), float(grid.y[ys].mean()))


@pytest.fixture(scope="module")
def retro():
    return {seed: _retroperitoneum(seed) for seed in SEEDS}


def test_the_ivc_lies_right_of_and_in_front_of_the_aorta_from_l1_to_l3(retro):
    for seed, (patient, grid, masks) in retro.items():
        for level in (0.0, -1.0, -2.0):
            z = level * patient.pitch
            aorta, ivc = _slice_centre(masks["aorta"], grid, z), _slice_centre(masks["ivc"], grid, z)
            assert aorta is not None and ivc is not None, f"seed {seed}: no aorta or IVC at {level} vertebrae"
            assert ivc[0] < aorta[0] - 15.0, f"seed {seed}, level {level}: IVC not right of the aorta"
            assert ivc[1] < aorta[1], f"seed {seed}, level {level}: IVC not in front of the aorta's centre"


def test_the_ivc_is_flattened_front_to_back(retro):
    ratios = []
    for _, (patient, grid, masks) in retro.items():
        index = int(np.argmin(np.abs(grid.z + patient.pitch)))
        ys, xs = np.nonzero(masks["ivc"][index])
        ratios.append((np.ptp(ys) + 1) / (np.ptp(xs) + 1))
    assert max(ratios) < 0.95 and np.median(ratios) < 0.9, ratios


def test_the_aorta_rests_on_the_front_of_the_vertebral_bodies_left_of_the_midline(retro):
    for seed, (patient, grid, masks) in retro.items():
        for level in (0.0, -1.0, -2.0):
            z = level * patient.pitch
            index = int(np.argmin(np.abs(grid.z - z)))
            ys, xs = np.nonzero(masks["aorta"][index])
            back, x = float(grid.y[ys].max()), float(grid.x[xs].mean())
            front_of_spine = float(patient.spine_y_at(np.array(grid.z[index]))) - patient.spine_ry
            assert front_of_spine - 8.0 <= back <= front_of_spine + 1.0, f"seed {seed}, level {level}: {back}"
            if level > -1.5:
                assert x > 0.0, f"seed {seed}, level {level}: aorta right of the midline"


def test_the_aorta_ends_at_its_bifurcation_between_l3_and_l5(retro):
    for seed, (patient, grid, masks) in retro.items():
        lowest = float(grid.z[np.flatnonzero(masks["aorta"].any(axis=(1, 2)))[0]])
        assert -3.35 * patient.pitch - 15.0 <= lowest <= -2.75 * patient.pitch, f"seed {seed}: {lowest}"


def test_the_crura_lie_either_side_of_the_aorta_and_meet_in_front_of_it(retro):
    for seed, (patient, grid, masks) in retro.items():
        index = int(np.argmin(np.abs(grid.z + 0.3 * patient.pitch)))
        _, aorta_x = np.nonzero(masks["aorta"][index])
        for side, name in ((-1, "right_crus"), (1, "left_crus")):
            _, crus_x = np.nonzero(masks[name][index])
            assert crus_x.size, f"seed {seed}: no {name} at L1"
            assert (side * (crus_x - aorta_x.mean()) > side * 0).all(), f"seed {seed}: {name} on the wrong side"
        # Somewhere above L1 a crus passes in front of the aorta (the median arcuate ligament).
        in_front = False
        for k in range(index, grid.z.size):
            aorta_ys, aorta_xs = np.nonzero(masks["aorta"][k])
            crus = masks["right_crus"][k] | masks["left_crus"][k]
            if aorta_ys.size == 0 or not crus.any():
                continue
            ys, xs = np.nonzero(crus)
            over = (xs >= aorta_xs.min()) & (xs <= aorta_xs.max()) & (ys < aorta_ys.min())
            in_front |= bool(over.any())
        assert in_front, f"seed {seed}: the crura never cross in front of the aorta"


def _distance_mm(mask: np.ndarray, to: np.ndarray) -> float:
    """Smallest distance (mm) from a voxel of ``mask`` to one of ``to``."""
    return float((ndimage.distance_transform_edt(~to) * STEP_MM)[mask].min())


def test_each_adrenal_touches_its_crus_and_the_right_one_the_back_of_the_ivc(retro):
    for seed, (_, grid, masks) in retro.items():
        right, left = masks["right_adrenal_gland"], masks["left_adrenal_gland"]
        assert right.any() and left.any()
        assert _distance_mm(right, masks["right_crus"]) <= 2.0 * STEP_MM, f"seed {seed}: right adrenal off its crus"
        assert _distance_mm(left, masks["left_crus"]) <= 2.0 * STEP_MM, f"seed {seed}: left adrenal off its crus"
        assert _distance_mm(right, masks["ivc"]) <= 2.0 * STEP_MM, f"seed {seed}: right adrenal off the IVC"
        _, ys, _ = np.nonzero(right)
        _, ivc_ys, _ = np.nonzero(masks["ivc"])
        assert grid.y[ys].mean() > grid.y[ivc_ys].mean(), f"seed {seed}: right adrenal not behind the IVC"


def test_the_adrenals_sit_above_or_in_front_of_the_upper_poles_of_their_kidneys(retro):
    def centre(mask, grid):
        zs, ys, xs = np.nonzero(mask)
        return grid.x[xs].mean(), grid.y[ys].mean(), grid.z[zs].mean(), grid.z[zs].max()

    for seed, (_, grid, masks) in retro.items():
        _, _, rz, _ = centre(masks["right_adrenal_gland"], grid)
        _, _, kz, ktop = centre(masks["right_kidney"], grid)
        assert rz > kz and rz < ktop + 40.0, f"seed {seed}: right adrenal not above its kidney"
        lx, ly, lz, _ = centre(masks["left_adrenal_gland"], grid)
        kx, ky, kz, _ = centre(masks["left_kidney"], grid)
        assert lx < kx and ly < ky and lz > kz, f"seed {seed}: left adrenal not in front of, medial to, above"


def test_the_spine_lies_at_its_own_depth_in_the_trunk_not_at_a_fixed_fraction_of_it():
    def aorta_depth_share(seed: int, detailed: bool) -> float:
        patient, organs, _ = _patient_and_anatomy(seed, detailed)
        front = -patient.outer_radius(np.array(-np.pi / 2))
        back = patient.outer_radius(np.array(np.pi / 2))
        low, high = organs["aorta"].bounds()
        grid = _grid((low[0], low[1], -STEP_MM), (high[0], high[1], STEP_MM))
        ys = np.nonzero(_masks({"aorta": organs["aorta"]}, grid)["aorta"][1])[0]
        return float((grid.y[ys].mean() - front) / (back - front))

    setbacks = [spine_setback(_patient_and_anatomy(seed)[0]) for seed in range(200)]
    assert min(setbacks) < SPINE_SETBACK_MM[0] + 3.0 and max(setbacks) > SPINE_SETBACK_MM[1] - 3.0, setbacks
    plain = np.std([aorta_depth_share(seed, False) for seed in range(40)])
    detailed = np.std([aorta_depth_share(seed, True) for seed in range(40)])
    assert detailed > 1.5 * plain, (plain, detailed)


def test_collapsed_loops_come_in_about_their_share_and_the_colon_is_never_collapsed():
    details = [bowel_detail(np.random.default_rng(seed), 8) for seed in range(100)]
    assert not any(d[0].collapsed for d in details)
    share = np.mean([loop.collapsed for d in details for loop in d[1:]])
    assert abs(share - COLLAPSED_SHARE) < 0.08, share
    assert all(loop.radius_factor < 1.0 for d in details for loop in d[1:] if loop.collapsed)


def test_a_detailed_case_holds_every_organ_a_third_a_calcified_aorta_and_half_reach_the_bladder():
    metas = []
    for seed in range(30):
        case = generate_case(seed, "small", detailed=True, threads=1)
        assert sorted(case.meta["organs_present"]) == sorted(ORGAN_IDS.values()), f"seed {seed}"
        metas.append(case.meta["detailed"])
    assert 2 <= sum(meta["aorta_calcified"] for meta in metas) <= 20  # share 0.35 of 30
    reach = sum(meta["bladder_level_in_field"] for meta in metas)
    assert 7 <= reach <= 26, reach  # abdomen-pelvis scans: share 0.5, plus fields that reach it anyway


def test_the_bladder_is_urine_behind_the_symphysis_in_an_abdomen_pelvis_scan():
    patient = detailed_habitus(sample_patient(np.random.default_rng([5, 0])), np.random.default_rng([5, 1]))
    shape = bladder(np.random.default_rng(7), patient)
    low, high = shape.bounds()
    crest = -3.7 * patient.pitch
    assert high[2] < crest - 20.0 and low[2] > crest - 200.0  # in the lesser pelvis, below the iliac crest
    assert high[1] < 0.0 and abs((low[0] + high[0]) / 2) < 25.0  # anterior, near the midline


def test_a_detailed_case_is_the_same_patient_seen_in_more_detail():
    plain, detailed = generate_case(4, "small", threads=1), generate_case(4, "small", detailed=True, threads=1)
    assert plain.meta["domain"] == detailed.meta["domain"]
    assert not np.array_equal(plain.label, detailed.label)
    for organ in ("liver", "spleen", "stomach"):
        ml = plain.meta["organ_volumes_ml"][organ], detailed.meta["organ_volumes_ml"][organ]
        assert abs(ml[0] - ml[1]) <= 0.35 * ml[0], f"{organ}: {ml}"


# Recorded from the generator before the detailed option existed: without it, every case must
# stay voxel for voxel what it was (the benchmarks' data and the quality calibration depend on it).
DEFAULT_PATH = {
    (0, False, False): "8fd87e0edb3ec9547e0f6b2ff3a7ce3a869b3faa223cef4d321552f14c42b158",
    (1, True, False): "6948dd8557f86467335cdac71f4fa21484ccecf901aceaae095ce435373a2a0f",
    (2, True, True): "f70a65cfa930aa3de842ad599fed50b5c18bed6cf46d19c173322b31704322d6",
    (3, False, True): "b90f5c5da146fd668769764c5ae973d1e573b433d2333c40a7d7523b444d38d8",
}


@pytest.mark.parametrize(("seed", "vary", "randomise"), sorted(DEFAULT_PATH))
def test_without_the_option_cases_are_voxel_identical_to_before(seed, vary, randomise):
    case = generate_case(seed, "small", vary=vary, randomise=randomise, threads=1)
    digest = hashlib.sha256(case.image.tobytes() + case.label.tobytes()).hexdigest()
    assert digest == DEFAULT_PATH[(seed, vary, randomise)]


def test_a_share_of_detailed_cases_is_drawn_case_by_case_and_each_is_that_case_made_alone(tmp_path):
    drawn = [is_detailed(7, "labeled", index, 0.5) for index in range(400)]
    assert 0.42 < np.mean(drawn) < 0.58, np.mean(drawn)
    assert drawn != [is_detailed(8, "labeled", index, 0.5) for index in range(400)], "the draw must follow the seed"
    assert not any(is_detailed(7, "labeled", index, 0.0) for index in range(50))
    assert all(is_detailed(7, "labeled", index, 1.0) for index in range(50))

    records = write_dataset(tmp_path, labeled=6, unlabeled=0, val=1, seed=7, detailed=0.5, progress=False)
    marked = ["detailed" in record for record in records if record["split"] == "labeled"]
    assert marked == drawn[:6] and 0 < sum(marked) < 6, marked
    assert "detailed" not in next(record for record in records if record["split"] == "val")
    for index, detailed in enumerate(marked):
        alone = generate_case(case_seed(7, "labeled", index), "small", detailed=detailed, threads=1)
        image, _ = read_volume(tmp_path / "train_images" / f"{case_id('labeled', index)}_0000.nii.gz")
        assert np.array_equal(image, alone.image), f"case {index} (detailed: {detailed})"


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_share_outside_zero_to_one_is_refused(tmp_path, share, capsys):
    with pytest.raises(ValueError, match=r"share of cases must lie in \[0, 1\]"):
        write_dataset(tmp_path, labeled=1, unlabeled=0, val=0, detailed=share, progress=False)
    with pytest.raises(SystemExit):
        phantom_cli(["--out", str(tmp_path), "--labeled", "1", "--detailed-anatomy", str(share)])
    assert "a share lies in [0, 1]" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing is written before the share is checked"
