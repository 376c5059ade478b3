"""The clinical anatomy (``generate_case(clinical=True)``): each rule as a property of many
generated patients, measured on the drawn shapes sampled on a fine grid and on generated cases'
tissue and label maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from segcore.labels import ORGAN_IDS
from segcore.phantom import PhantomDomain, case_id, case_seed, generate_case, write_dataset
from segcore.phantom.__main__ import main as phantom_cli
from segcore.phantom.anatomy import PAINT_ORDER, build_anatomy
from segcore.phantom.clinical import (
    GALLBLADDER_STATES,
    STOMACH_STATES,
    draw_clinical,
    draw_gallbladder,
    draw_stomach,
)
from segcore.phantom.dataset import is_clinical
from segcore.phantom.lesions import DIAMETER_MM, LIVER_LESION_SHARE, MAX_LIVER_LESIONS, OrganDepth
from segcore.phantom.patient import sample_patient
from segcore.phantom.shapes import Grid
from segcore.phantom.tissues import PHASES, Finding, finding_hu, hu_lookup
from segcore.volumes import read_volume
from segcore.volumes.geometry import to_canonical

PATIENTS = range(40)
STEP_MM = 1.5
PARTS = ("lesions", "gallbladder", "stomach", "ivc")
LESION_CODES = {
    "liver": {Finding.LIVER_CYST, Finding.METASTASIS, Finding.METASTASIS_RIM, Finding.HYPERVASCULAR_METASTASIS,
              Finding.HAEMANGIOMA, Finding.HAEMANGIOMA_NODULE},
    "kidney": {Finding.RENAL_CYST, Finding.COMPLEX_RENAL_CYST},
    "spleen": {Finding.SPLENIC_CYST},
    "gallbladder": {Finding.BILE, Finding.CALCIFIED_STONE, Finding.SOFT_STONE},
    "stomach": {Finding.FOOD},
    "ivc": {Finding.IVC_RENAL_RETURN, Finding.IVC_INFRARENAL},
}  # fmt: skip


def _patient(seed: int):
    patient = sample_patient(np.random.default_rng([seed, 0]))
    organs, _ = build_anatomy(patient, np.random.default_rng([seed, 1]))
    return patient, organs


def _streams(seed: int):
    return lambda name: np.random.default_rng([seed, 2 + PARTS.index(name)])


def _grid(low, high) -> Grid:
    axes = [np.arange(lo, hi + STEP_MM, STEP_MM, dtype=np.float32) for lo, hi in zip(low, high)]
    return Grid(axes[0], axes[1], axes[2], (STEP_MM,) * 3)


def _mask(shape, grid: Grid) -> np.ndarray:
    return shape.field_in(grid.whole) <= 0


@pytest.fixture(scope="module")
def drawn():
    """Per patient: the patient, its clinical organs by name and its findings."""
    out = {}
    for seed in PATIENTS:
        patient, organs = _patient(seed)
        organs, findings = draw_clinical(patient, organs, _streams(seed))
        out[seed] = (patient, {organ.name: organ for organ in organs}, findings)
    return out


def test_livers_hold_0_to_10_lesions_of_5_to_80_mm_in_about_their_share(drawn):
    counts = []
    for _, (_, _, findings) in drawn.items():
        liver = [entry for entry in findings.meta["lesions"] if entry["organ"] == "liver"]
        counts.append(len(liver))
        assert all(DIAMETER_MM[0] <= entry["diameter_mm"] <= DIAMETER_MM[1] for entry in findings.meta["lesions"])
    assert max(counts) <= MAX_LIVER_LESIONS and max(counts) >= 4, counts
    assert abs(np.mean(np.array(counts) > 0) - LIVER_LESION_SHARE) < 0.2, counts
    kinds = {entry["kind"] for _, (_, _, f) in drawn.items() for entry in f.meta["lesions"]}
    assert {"cyst", "metastasis", "haemangioma", "complex_cyst"} <= kinds, kinds
    renal = [entry for _, (_, _, f) in drawn.items() for entry in f.meta["lesions"] if "kidney" in entry["organ"]]
    assert renal and any(entry["surface"] for entry in renal) and not all(entry["surface"] for entry in renal)


def test_deep_lesions_lie_inside_their_organ_and_surface_ones_bulge_a_little(drawn):
    checked = {"deep": 0, "capsular": 0, "exophytic": 0}
    for seed, (_, organs, findings) in drawn.items():
        for lesion in findings.lesions:
            if lesion.kind == "stone":
                continue
            low, high = lesion.shape.bounds()
            grid = _grid(low - 12.0, high + 12.0)
            inside, organ = _mask(lesion.shape, grid), _mask(organs[lesion.organ].shape, grid)
            outside = (inside & ~organ).sum() / inside.sum()
            where = f"seed {seed}, {lesion.organ} {lesion.kind} {lesion.diameter_mm} mm"
            if not lesion.surface:
                assert outside < 0.02, where
                checked["deep"] += 1
            elif lesion.organ == "liver":  # a bulge under a millimetre or two escapes the grid
                assert outside < 0.3 and (outside > 0.005 or lesion.diameter_mm < 16.0), (where, outside)
                bulge = ndimage.distance_transform_edt(~organ)[inside & ~organ] * STEP_MM
                assert bulge.size == 0 or bulge.max() <= 10.0 + 2 * STEP_MM, (where, bulge.max())
                checked["capsular"] += 1
            else:  # exophytic: partly outside the kidney, partly in it
                assert 0.05 < outside < 0.95, (where, outside)
                checked["exophytic"] += 1
    assert min(checked.values()) >= 2, checked


@pytest.fixture(scope="module")
def cases():
    """Generated cases with their canonical tissue and label maps: plain, detailed, varied (organs removed)."""
    out = []
    for seed, options in ((0, {}), (1, {}), (2, {"detailed": True}), (3, {"vary": True}), (6, {}), (7, {})):
        case = generate_case(seed, "medium", clinical=True, keep_shapes=True, threads=1, **options)
        label, _ = to_canonical(case.label, case.geometry)
        out.append((seed, case, case.tissue, label))
    return out


def test_every_finding_voxel_carries_its_organs_label(cases):
    seen = set()
    for seed, _, tissue, label in cases:
        for organ, codes in LESION_CODES.items():
            where = np.isin(tissue, list(codes))
            ids = (
                [ORGAN_IDS[f"{side}_kidney"] for side in ("right", "left")] if organ == "kidney" else [ORGAN_IDS[organ]]
            )
            assert np.isin(label[where], ids).all(), f"seed {seed}: {organ} finding outside its label"
            seen |= set(np.unique(tissue[where]).tolist())
    assert {Finding.LIVER_CYST, Finding.BILE, Finding.IVC_INFRARENAL, Finding.IVC_RENAL_RETURN} <= seen, seen


def test_surface_lesions_add_their_bulge_to_the_organ_volume(cases):
    for seed, case, _, label in cases:
        assert "clinical" in case.meta
        voxel_ml = float(np.prod(case.geometry.spacing)) / 1000.0
        for organ in ("liver", "right_kidney", "left_kidney"):
            painted = round(float((label == ORGAN_IDS[organ]).sum()) * voxel_ml, 2)
            assert abs(painted - case.meta["organ_volumes_ml"][organ]) < 0.02, f"seed {seed}: {organ}"


def test_the_infrarenal_ivc_is_unenhanced_blood_and_the_suprarenal_enhanced(cases):
    for phase in PHASES:
        values = []
        for seed in range(200):
            table = hu_lookup(PhantomDomain(phase=phase), np.random.default_rng(seed))
            finding_hu(table, PhantomDomain(phase=phase), np.random.default_rng(seed))
            values.append((table[Finding.IVC_INFRARENAL], table[Finding.IVC_RENAL_RETURN]))
        below, above = np.array(values).T
        if phase == "arterial":
            assert (below < 65).all() and (above > 95).all() and (above - below > 40).all()
        elif phase == "portal_venous":
            assert np.mean(below) < np.mean(above) - 20 and (below > 65).all()
        else:
            assert (np.abs(above - below) <= 10).all()
    for seed, case, tissue, label in cases:
        ivc = label == ORGAN_IDS["ivc"]
        assert (tissue[ivc] >= Finding.IVC_RENAL_RETURN).all(), f"seed {seed}"
        low = ivc & (np.arange(ivc.shape[0]) < ivc.shape[0] // 8)[:, None, None]
        if "field_of_view" not in case.meta and low.any():  # a full field reaches below the renal veins
            assert (tissue[low] == Finding.IVC_INFRARENAL).mean() > 0.5, f"seed {seed}"


def test_findings_have_their_ct_numbers():
    for seed in range(200):
        domain = PhantomDomain(phase=PHASES[seed % 3])
        table = np.zeros(256, dtype=np.float32)
        finding_hu(table, domain, np.random.default_rng(seed))
        for code in (Finding.LIVER_CYST, Finding.RENAL_CYST, Finding.SPLENIC_CYST):
            assert 0.0 <= table[code] <= 20.0
        assert 0.0 <= table[Finding.BILE] <= 25.0 and 40.0 <= table[Finding.COMPLEX_RENAL_CYST] <= 90.0
        assert table[Finding.CALCIFIED_STONE] >= 250.0
        liver = {"non_contrast": 58, "arterial": 75, "portal_venous": 115}[domain.phase]
        assert table[Finding.METASTASIS] < liver - 10
        if domain.phase == "arterial":
            assert table[Finding.HYPERVASCULAR_METASTASIS] > liver + 30
            assert table[Finding.HAEMANGIOMA_NODULE] > table[Finding.HAEMANGIOMA] + 100
        randomised = np.zeros(256, dtype=np.float32)
        finding_hu(randomised, PhantomDomain(phase=domain.phase, randomised=True), np.random.default_rng(seed))
        assert np.isfinite(randomised).all()


def test_gallbladders_range_from_contracted_to_distended_in_their_shares():
    patient, organs = _patient(0)
    by_name = {organ.name: organ for organ in organs}
    liver = OrganDepth(by_name["liver"].shape)
    states, below = [], []
    for seed in range(300):
        organ, stones, meta = draw_gallbladder(
            np.random.default_rng(seed), by_name["gallbladder"].shape, liver, patient
        )
        low, high = GALLBLADDER_STATES[meta["state"]][1]
        semi = organ.shape.semi_axes
        assert low <= 4.0 / 3.0 * np.pi * np.prod(semi) / 1000.0 <= high + 1e-6, meta
        assert 2.0 <= meta["volume_ml"] <= 85.0
        if meta["state"] == "contracted":
            assert meta["wall_mm"] >= 3.0 and -organ.core_below * semi[0] >= 2.9
        states.append(meta["state"])
        below.append(meta["fundus_below_liver"])
    for state, (share, _, _) in GALLBLADDER_STATES.items():
        assert abs(states.count(state) / len(states) - share) < 0.07, (state, states.count(state))
    assert 0.4 < np.mean(below) < 0.97, np.mean(below)


def test_gallstones_lie_in_the_dependent_part_of_the_lumen(drawn):
    stones = 0
    for seed, (_, organs, findings) in drawn.items():
        gallbladder = organs["gallbladder"]
        low, high = gallbladder.shape.bounds()
        grid = _grid(low, high)
        field = gallbladder.shape.field_in(grid.whole)
        lumen = field < gallbladder.core_below
        centre_y = float(grid.y[np.nonzero(lumen)[1]].mean())
        for stone in (lesion for lesion in findings.lesions if lesion.kind == "stone"):
            inside = _mask(stone.shape, grid)
            assert (inside & ~lumen).sum() <= 0.15 * inside.sum(), f"seed {seed}: stone through the wall"
            assert stone.shape.center[1] >= centre_y - 2.0, f"seed {seed}: stone not in the dependent half"
            stones += 1
    assert stones >= 1


def test_a_third_of_stomachs_are_collapsed_with_thick_walls_and_folds():
    patient, organs = _patient(1)
    stomach = next(organ for organ in organs if organ.name == "stomach")
    states, food = [], []
    for seed in range(400):
        organ, has_food, meta = draw_stomach(np.random.default_rng(seed), stomach, 0.0)
        states.append(meta["state"])
        food.append(has_food is not None)
        if meta["state"] == "collapsed":
            assert meta["wall_mm"] >= 6.0 and organ.plaques is not None and has_food is None
            assert organ.shape.radii.max() < 0.6 * stomach.shape.radii.max()
        if meta["state"] == "distended":
            assert organ.plaques is None and organ.shape.radii.max() > 1.15 * stomach.shape.radii.max()
    for state, (share, _, _) in STOMACH_STATES.items():
        assert abs(states.count(state) / len(states) - share) < 0.07, (state, states.count(state))
    assert 0.15 < np.mean(food) < 0.4


def test_a_collapsed_stomach_is_mostly_wall_and_a_distended_one_mostly_lumen(drawn):
    lumen_share = {"collapsed": [], "distended": []}
    for _, (_, organs, findings) in drawn.items():
        state = findings.meta["stomach"]["state"]
        if state not in lumen_share:
            continue
        stomach = organs["stomach"]
        grid = _grid(*stomach.shape.bounds())
        field = stomach.shape.field_in(grid.whole)
        lumen = field < stomach.core_below
        if stomach.plaques is not None:  # the rugae stand into the lumen
            lumen &= ~((field > stomach.plaques.wall_above) & stomach.plaques.mask(grid.whole))
        lumen_share[state].append(lumen.sum() / (field <= 0).sum())
    assert lumen_share["collapsed"] and lumen_share["distended"]
    assert max(lumen_share["collapsed"]) < 0.35 < min(lumen_share["distended"]), lumen_share


def _painted(organs: dict, grid: Grid) -> np.ndarray:
    """Labels as the generator paints them (first claim wins), tissue rules left out."""
    label = np.zeros(grid.shape, dtype=np.uint8)
    for name in PAINT_ORDER:
        if name in organs:
            label[_mask(organs[name].shape, grid) & (label == 0)] = ORGAN_IDS[name]
    return label


def test_the_caudate_lobe_surrounds_the_retrohepatic_ivc_and_closes_behind_it_in_some(drawn):
    closed = []
    for seed, (patient, organs, findings) in list(drawn.items())[:20]:
        z = 0.5 * (0.4 * patient.pitch + patient.dome_right - 30.0 * patient.scale)
        low, high = organs["ivc"].shape.bounds()
        grid = _grid((low[0] - 40, low[1] - 40, z - STEP_MM), (high[0] + 40, high[1] + 40, z + STEP_MM))
        label = _painted(organs, grid)[1]
        ivc = label == ORGAN_IDS["ivc"]
        assert ivc.any(), f"seed {seed}"
        ring = ndimage.binary_dilation(ivc, iterations=2) & ~ivc
        share = (label[ring] == ORGAN_IDS["liver"]).mean()
        ys = np.nonzero(ivc)[0]
        behind = ring & (np.arange(ring.shape[0]) > ys.max() - 1)[:, None]
        back = (label[behind] == ORGAN_IDS["liver"]).mean()
        enclosed = findings.meta["ivc"]["caudate_encloses"]
        assert share > (0.8 if enclosed else 0.45), f"seed {seed}: liver around the IVC {share:.2f}"
        closed.append(back > 0.5)
        if enclosed:
            assert back > 0.5, f"seed {seed}: no liver behind the IVC"
    assert 3 <= sum(closed) < len(closed), closed  # the right lobe's own back covers it in some others


def test_a_clinical_case_is_the_same_patient_with_findings():
    plain, clinical = generate_case(4, "small", threads=1), generate_case(4, "small", clinical=True, threads=1)
    assert plain.meta["domain"] == clinical.meta["domain"] and plain.geometry.spacing == clinical.geometry.spacing
    assert "clinical" not in plain.meta and not np.array_equal(plain.image, clinical.image)
    for organ in ("spleen", "aorta", "pancreas"):
        assert plain.meta["organ_volumes_ml"][organ] == pytest.approx(clinical.meta["organ_volumes_ml"][organ], 0.05)


def test_a_share_of_clinical_cases_is_drawn_case_by_case_and_each_is_that_case_made_alone(tmp_path):
    drawn_cases = [is_clinical(3, "labeled", index, 0.5) for index in range(400)]
    assert 0.42 < np.mean(drawn_cases) < 0.58
    assert drawn_cases != [is_clinical(4, "labeled", index, 0.5) for index in range(400)]
    assert not any(is_clinical(3, "labeled", index, 0.0) for index in range(50))
    records = write_dataset(tmp_path, labeled=4, unlabeled=0, val=1, seed=3, clinical=0.5, progress=False)
    marked = ["clinical" in record for record in records if record["split"] == "labeled"]
    assert marked == drawn_cases[:4] and 0 < sum(marked) < 4, marked
    assert "clinical" not in next(record for record in records if record["split"] == "val")
    for index, clinical in enumerate(marked):
        alone = generate_case(case_seed(3, "labeled", index), "small", clinical=clinical, threads=1)
        image, _ = read_volume(tmp_path / "train_images" / f"{case_id('labeled', index)}_0000.nii.gz")
        assert np.array_equal(image, alone.image), f"case {index} (clinical: {clinical})"


@pytest.mark.parametrize("share", ["-0.1", "1.5"])
def test_a_clinical_share_outside_zero_to_one_is_refused(tmp_path, share, capsys):
    with pytest.raises(ValueError, match=r"clinical: share of cases must lie in \[0, 1\]"):
        write_dataset(tmp_path, labeled=1, unlabeled=0, val=0, clinical=float(share), progress=False)
    with pytest.raises(SystemExit):
        phantom_cli(["--out", str(tmp_path), "--labeled", "1", "--clinical-anatomy", share])
    assert "a share lies in [0, 1]" in capsys.readouterr().err


def test_forcing_the_domain_keeps_the_findings():
    free = generate_case(5, "small", clinical=True, threads=1)
    forced = generate_case(5, "small", clinical=True, threads=1, domain=PhantomDomain(phase="arterial"))
    assert np.array_equal(free.label, forced.label) and free.meta["clinical"] == forced.meta["clinical"]
