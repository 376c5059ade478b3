"""The synthetic phantom generator: determinism, anatomy, geometry, domains and the FLARE22 layout.

Anatomy is checked on the stored arrays through their geometry (physical LPS positions), not
through the generator's own patient frame, so a mistake in orientation handling shows up.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from segcore.labels import ORGAN_IDS, ORGANS
from segcore.phantom import PhantomDomain, case_seed, draw_domain, generate_case, sample_domain, write_dataset
from segcore.phantom.__main__ import main as phantom_cli
from segcore.phantom.patient import sample_patient
from segcore.phantom.scanner import plan_scan
from segcore.phantom.tissues import (
    HU_MIN,
    HU_TABLE,
    ORGAN_BASE,
    PHASES,
    RANDOMISED_MARGIN_HU,
    SOFT_TISSUE_HU,
    Tissue,
    hu_lookup,
    sample_randomised_domain,
)
from segcore.volumes import read_labels_on_grid, read_volume
from segcore.volumes.geometry import Geometry, to_canonical

SEEDS = range(8)
QUIET = PhantomDomain(phase="non_contrast", noise_sigma_hu=0.0)


@pytest.fixture(scope="module")
def cases():
    return {seed: generate_case(seed, "small", keep_shapes=True) for seed in SEEDS}


def voxel_ml(geometry: Geometry) -> float:
    return float(np.prod(geometry.spacing)) / 1000.0


def centroid_lps(label: np.ndarray, geometry: Geometry, organ: str) -> np.ndarray:
    """Physical LPS centroid (mm) of an organ, from the stored array and its geometry."""
    z, y, x = np.nonzero(label == ORGAN_IDS[organ])
    return geometry.index_to_physical(np.stack([x, y, z], axis=1)).mean(axis=0)


def test_same_seed_gives_identical_arrays_whatever_the_threads():
    first = generate_case(123, "small", threads=1)
    second = generate_case(np.random.SeedSequence(123), "small", threads=2)
    assert np.array_equal(first.image, second.image) and np.array_equal(first.label, second.label)
    assert first.geometry == second.geometry and first.meta == second.meta
    other = generate_case(124, "small")
    assert first.image.shape != other.image.shape or not np.array_equal(first.image, other.image)


def test_dtypes_shapes_and_hu_ranges(cases):
    for phantom in cases.values():
        assert phantom.image.dtype == np.int16 and phantom.label.dtype == np.uint8
        assert phantom.image.shape == phantom.label.shape == phantom.geometry.shape_zyx
        assert min(phantom.image.shape) >= 24 and max(phantom.image.shape) <= 72
        assert phantom.image.min() <= -990  # air around the body
        assert (phantom.image > 300).sum() > 10  # bone
        assert phantom.label.max() <= max(ORGANS)


def test_full_field_small_cases_hold_all_13_organs(cases):
    for seed, phantom in cases.items():
        present = set(np.unique(phantom.label).tolist()) - {0}
        assert present == set(ORGANS), f"seed {seed}: missing {sorted(set(ORGANS) - present)}"
        counts = np.bincount(phantom.label.ravel(), minlength=14)
        assert counts[1:].min() >= 3, f"seed {seed}: an organ has fewer than 3 voxels: {counts}"


# Plausible adult volumes (mL), widened for the coarse small grid (5-9 mm voxels).
VOLUME_RANGES_ML = {
    "liver": (900, 2800),
    "spleen": (50, 450),
    "right_kidney": (40, 300),
    "left_kidney": (40, 300),
    "pancreas": (25, 160),
    "stomach": (120, 1200),
    "gallbladder": (5, 120),
    "right_adrenal_gland": (0.5, 20),
    "left_adrenal_gland": (0.5, 20),
}


def test_organ_volumes_are_plausible(cases):
    for seed, phantom in cases.items():
        counts = np.bincount(phantom.label.ravel(), minlength=14)
        for organ, (low, high) in VOLUME_RANGES_ML.items():
            volume = counts[ORGAN_IDS[organ]] * voxel_ml(phantom.geometry)
            assert low <= volume <= high, f"seed {seed}: {organ} {volume:.1f} mL not in [{low}, {high}]"
        volumes = {organ: counts[ORGAN_IDS[organ]] for organ in ORGAN_IDS}
        assert max(volumes, key=volumes.get) == "liver"


def test_left_right_front_back_up_down_in_physical_space(cases):
    directions = set()
    for seed, phantom in cases.items():
        directions.add(phantom.geometry.direction)
        c = {organ: centroid_lps(phantom.label, phantom.geometry, organ) for organ in ORGAN_IDS}
        x, y, z = 0, 1, 2
        # LPS: +x is the patient's left, +y posterior, +z superior.
        assert c["liver"][x] < c["spleen"][x], f"seed {seed}: liver not right of spleen"
        assert c["right_kidney"][x] < c["left_kidney"][x], f"seed {seed}"
        assert c["right_adrenal_gland"][x] < c["left_adrenal_gland"][x], f"seed {seed}"
        assert c["ivc"][x] < c["aorta"][x] and c["liver"][x] < c["stomach"][x], f"seed {seed}"
        assert c["right_kidney"][y] > c["pancreas"][y] and c["aorta"][y] > c["pancreas"][y], f"seed {seed}"
        assert c["left_kidney"][y] > c["stomach"][y], f"seed {seed}"
        for side in ("right", "left"):
            assert c[f"{side}_adrenal_gland"][z] > c[f"{side}_kidney"][z], f"seed {seed}: {side} adrenal"
        assert c["esophagus"][z] > c["pancreas"][z] and c["liver"][z] > c["right_kidney"][z], f"seed {seed}"
    assert len(directions) >= 2, "the test cases should cover several stored orientations"


def test_organs_stay_inside_their_shapes_and_small_ones_are_not_eaten(cases):
    for seed, phantom in cases.items():
        canonical, _ = to_canonical(phantom.label, phantom.geometry)
        assert set(phantom.shapes) == set(ORGANS)
        for organ_id, shape in phantom.shapes.items():
            painted = canonical == organ_id
            inside_box = painted[shape.slices]
            # Every labelled voxel lies inside the organ's own shape (nothing painted elsewhere).
            assert inside_box.sum() == painted.sum(), f"seed {seed}: {ORGANS[organ_id]} outside its box"
            assert not (inside_box & ~shape.mask).any(), f"seed {seed}: {ORGANS[organ_id]} outside its shape"
            kept = inside_box.sum() / shape.mask.sum()
            needed = 0.95 if ORGANS[organ_id] in ("right_adrenal_gland", "left_adrenal_gland", "esophagus") else 0.5
            assert kept >= needed, f"seed {seed}: {ORGANS[organ_id]} kept only {kept:.0%} of its shape"


def test_organ_shapes_barely_overlap_except_where_organs_meet(cases):
    # The liver fills what the others leave; the esophagus joins the stomach; the adrenals cap the kidneys.
    meeting = {frozenset(pair) for pair in (("esophagus", "stomach"), ("left_adrenal_gland", "left_kidney"),
                                            ("right_adrenal_gland", "right_kidney"))}  # fmt: skip
    for seed, phantom in cases.items():
        for a, b in itertools.combinations(sorted(phantom.shapes), 2):
            if "liver" in (ORGANS[a], ORGANS[b]) or frozenset((ORGANS[a], ORGANS[b])) in meeting:
                continue
            first, second = phantom.shapes[a], phantom.shapes[b]
            low = [max(s.start, t.start) for s, t in zip(first.slices, second.slices)]
            high = [min(s.stop, t.stop) for s, t in zip(first.slices, second.slices)]
            if any(lo >= hi for lo, hi in zip(low, high)):
                continue
            common = [tuple(slice(lo - s.start, hi - s.start) for lo, hi, s in zip(low, high, shape.slices))
                      for shape in (first, second)]  # fmt: skip
            overlap = (first.mask[common[0]] & second.mask[common[1]]).sum()
            smaller = min(first.mask.sum(), second.mask.sum())
            assert overlap <= 0.15 * smaller, f"seed {seed}: {ORGANS[a]} and {ORGANS[b]} overlap {overlap} voxels"


def test_geometry_varies_and_full_size_grids_are_clinical():
    small = [generate_case(seed, "small").geometry for seed in range(12)]
    assert len({g.direction for g in small}) >= 3
    assert len({g.spacing for g in small}) == len(small)
    for seed in range(40):
        rng = np.random.default_rng(seed)
        patient = sample_patient(rng)
        scan = plan_scan(rng, "full", patient, (-100.0, 110.0), full_field=True)
        canonical = scan.reorientation.canonical
        assert canonical.size[:2] == (512, 512)
        assert 0.6 <= canonical.spacing[0] == canonical.spacing[1] <= 1.0
        assert 1.0 <= canonical.spacing[2] <= 5.0 and 40 <= canonical.size[2] <= 350
        assert np.allclose(canonical.direction, np.eye(3).ravel())
        assert scan.full_field


def test_medium_cases_have_medium_grids_and_every_organ():
    for seed in range(3):
        case = generate_case(seed, "medium")
        canonical = to_canonical(case.label, case.geometry)[1].canonical
        assert 128 <= canonical.size[0] == canonical.size[1] <= 160
        assert 2.0 <= canonical.spacing[2] <= 5.0 and canonical.size[2] <= 160
        assert set(np.unique(case.label)) == set(range(14))


def test_imposed_geometry_is_kept():
    geometry = Geometry(size=(40, 36, 30), spacing=(9.0, 9.0, 10.0), origin=(100.0, -50.0, 30.0),
                        direction=(0, 0, 1, -1, 0, 0, 0, -1, 0))  # fmt: skip
    phantom = generate_case(5, "small", geometry=geometry)
    assert phantom.geometry == geometry and phantom.image.shape == (30, 36, 40)
    assert {ORGAN_IDS["liver"], ORGAN_IDS["spleen"]} <= set(np.unique(phantom.label).tolist())


def test_forced_domain_changes_intensities_not_anatomy():
    plain = generate_case(9, "small", QUIET)
    arterial = generate_case(9, "small", PhantomDomain(phase="arterial", noise_sigma_hu=0.0))
    venous = generate_case(9, "small", PhantomDomain(phase="portal_venous", noise_sigma_hu=0.0))
    assert np.array_equal(plain.label, arterial.label) and plain.geometry == arterial.geometry
    aorta = [np.median(case.image[case.label == ORGAN_IDS["aorta"]]) for case in (plain, arterial, venous)]
    assert aorta[0] < 80 and aorta[1] > 160 and aorta[0] < aorta[2] < aorta[1], aorta
    liver = [np.median(case.image[case.label == ORGAN_IDS["liver"]]) for case in (plain, venous)]
    assert 35 < liver[0] < 80 and liver[1] > liver[0] + 25, liver
    assert arterial.meta["domain"]["phase"] == "arterial"


def test_noise_level_matches_the_domain():
    quiet = generate_case(4, "small", QUIET)
    noisy = generate_case(4, "small", PhantomDomain(phase="non_contrast", noise_sigma_hu=30.0))
    unclipped = (quiet.image > -900) & (noisy.image > -900)
    difference = noisy.image[unclipped].astype(float) - quiet.image[unclipped]
    assert abs(difference.mean()) < 2.0 and 25.0 < difference.std() < 35.0


def test_case_depends_only_on_seed_split_and_index(tmp_path):
    alone = generate_case(case_seed(3, "labeled", 1), "small")
    write_dataset(tmp_path / "many", labeled=2, unlabeled=3, val=1, seed=3, progress=False)
    image, geometry = read_volume(tmp_path / "many" / "train_images" / "FLARE22_Tr_0002_0000.nii.gz")
    assert geometry.same_grid(alone.geometry) and np.array_equal(image, alone.image)
    write_dataset(tmp_path / "few", labeled=0, unlabeled=2, val=0, seed=3, progress=False)
    for name in ("Case_00001_0000.nii.gz", "Case_00002_0000.nii.gz"):
        few = (tmp_path / "few" / "trainu_images" / name).read_bytes()
        assert few == (tmp_path / "many" / "trainu_images" / name).read_bytes()
    # A case added by a later call from index 2 is the third case of the one call, byte for byte.
    records = write_dataset(tmp_path / "late", labeled=0, unlabeled=1, val=0, seed=3, start=2, progress=False)
    assert [r["id"] for r in records] == ["Case_00003"]
    late = (tmp_path / "late" / "trainu_images" / "Case_00003_0000.nii.gz").read_bytes()
    assert late == (tmp_path / "many" / "trainu_images" / "Case_00003_0000.nii.gz").read_bytes()


def test_phases_condition_the_drawn_domain_and_nothing_else():
    rng = np.random.default_rng(11)
    drawn = [draw_domain(rng, phases=("arterial", "non_contrast")).phase for _ in range(200)]
    assert set(drawn) == {"arterial", "non_contrast"}  # never portal venous, both others
    assert 60 < drawn.count("arterial") < 140  # each half of the time, as sample_domain weighs them
    assert draw_domain(np.random.default_rng(4)) == sample_domain(np.random.default_rng(4))
    plain = generate_case(12, "small")
    cases = {phase: generate_case(12, "small", phases=(phase,)) for phase in ("arterial", "portal_venous")}
    for phase, case in cases.items():
        assert case.meta["domain"]["phase"] == phase
        assert np.array_equal(case.label, plain.label) and case.geometry == plain.geometry
    assert cases["arterial"].meta["domain"]["phase"] != cases["portal_venous"].meta["domain"]["phase"]


@pytest.mark.parametrize("phases", [(), ("venous",), ("arterial", "late")])
def test_unknown_phases_are_refused_before_anything_is_written(tmp_path, phases):
    with pytest.raises(ValueError, match="phases must be"):
        write_dataset(tmp_path / "out", labeled=1, unlabeled=0, val=0, phases=phases, progress=False)
    with pytest.raises(ValueError, match="must not be negative"):
        write_dataset(tmp_path / "out", labeled=1, unlabeled=0, val=0, start=-1, progress=False)
    assert not (tmp_path / "out").exists()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.nii.gz"))}


def test_cli_writes_the_flare22_layout_reproducibly(tmp_path, capsys):
    args = ["--labeled", "2", "--unlabeled", "2", "--val", "1", "--size", "small", "--seed", "5", "--no-progress"]
    assert phantom_cli(["--out", str(tmp_path / "a"), *args]) == 0
    assert "wrote 5 cases" in capsys.readouterr().out
    assert phantom_cli(["--out", str(tmp_path / "b"), *args, "--workers", "2"]) == 0
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert set(first) == {
        "train_images/FLARE22_Tr_0001_0000.nii.gz", "train_images/FLARE22_Tr_0002_0000.nii.gz",
        "train_mask/FLARE22_Tr_0001.nii.gz", "train_mask/FLARE22_Tr_0002.nii.gz",
        "trainu_images/Case_00001_0000.nii.gz", "trainu_images/Case_00002_0000.nii.gz",
        "val_images/FLARE22_Ts_0001_0000.nii.gz", "val_mask/FLARE22_Ts_0001.nii.gz",
    }  # fmt: skip
    assert first == second, "same seed must give byte-identical files, with or without workers"
    root = tmp_path / "a"
    for mask in sorted((root / "train_mask").iterdir()):
        image, geometry = read_volume(root / "train_images" / mask.name.replace(".nii.gz", "_0000.nii.gz"))
        label = read_labels_on_grid(mask, geometry)
        assert image.dtype == np.int16 and set(np.unique(label).tolist()) == set(range(14))


def test_cli_forces_a_shifted_domain(tmp_path):
    assert phantom_cli(["--out", str(tmp_path), "--labeled", "0", "--unlabeled", "0", "--val", "2",
                        "--phase", "arterial", "--noise-sigma", "35", "--no-progress"]) == 0  # fmt: skip
    records = json.loads((tmp_path / "phantom_cases.json").read_text())
    assert [r["domain"]["phase"] for r in records] == ["arterial", "arterial"]
    assert all(r["domain"]["noise_sigma_hu"] == 35 for r in records)
    assert [r["domain_group"] for r in records] == ["arterial+noisy", "arterial+noisy"]  # what UIF reports by


def organ_means(case) -> dict[int, float]:
    return {organ: float(case.image[case.label == organ].mean()) for organ in (1, 3) if (case.label == organ).any()}


def test_randomised_domains_keep_the_anatomy_and_scramble_the_tissue_values():
    realistic = [generate_case(seed, "small") for seed in range(8)]
    randomised = [generate_case(seed, "small", randomise=True) for seed in range(8)]
    for plain, scrambled in zip(realistic, randomised, strict=True):
        assert np.array_equal(plain.label, scrambled.label) and plain.geometry == scrambled.geometry
        assert scrambled.meta["domain"]["randomised"] and not plain.meta["domain"]["randomised"]
    # liver brighter than spleen in some randomised cases, darker in others (realistic: a fixed order per phase)
    orders = {organ_means(case)[1] > organ_means(case)[3] for case in randomised}
    assert orders == {True, False}
    assert np.ptp([organ_means(case)[1] for case in randomised]) > 100  # liver: -22..195 HU, or anywhere


def test_bias_field_and_thick_slices_act_on_the_image():
    base = generate_case(3, "medium", QUIET)
    biased = generate_case(3, "medium", PhantomDomain(phase="non_contrast", noise_sigma_hu=0.0, bias_hu=60.0))
    difference = biased.image.astype(np.float32) - base.image
    inside = (base.image > -900) & (biased.image > -900)
    assert 20 < np.ptp(difference[inside]) <= 2 * 60 + 2  # a smooth field of about the amplitude asked
    thick = generate_case(3, "medium", PhantomDomain(phase="non_contrast", noise_sigma_hu=0.0, slice_mm=5.0))
    assert np.array_equal(thick.label, base.label)

    def z_roughness(case) -> float:  # mean change from one slice to the next along the body axis
        canonical = to_canonical(case.image.astype(np.float32), case.geometry)[0]
        return float(np.abs(np.diff(canonical, axis=0)).mean())

    assert z_roughness(thick) < 0.9 * z_roughness(base)
    with pytest.raises(ValueError, match="must not be negative"):
        PhantomDomain(bias_hu=-1.0)


@pytest.fixture(scope="module")
def varied():
    return [generate_case(seed, "medium", vary=True) for seed in range(24)]


def test_varied_cases_are_deterministic_and_differ_from_the_realistic_ones():
    first = generate_case(11, "small", randomise=True, vary=True, threads=1)
    again = generate_case(np.random.SeedSequence(11), "small", randomise=True, vary=True, threads=2)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.label, again.label)
    assert first.geometry == again.geometry and first.meta == again.meta
    plain = generate_case(11, "small", randomise=True)
    assert first.label.shape != plain.label.shape or not np.array_equal(first.label, plain.label)
    assert "organs_removed" not in plain.meta and "field_of_view" not in plain.meta


def test_intensity_randomisation_leaves_varied_labels_alone():
    for seed in range(6):
        shaped = generate_case(seed, "small", vary=True)
        scrambled = generate_case(seed, "small", randomise=True, vary=True)
        assert np.array_equal(shaped.label, scrambled.label) and shaped.geometry == scrambled.geometry
        assert not np.array_equal(shaped.image, scrambled.image)


def test_field_of_view_variation_stays_in_its_ranges(varied):
    slabs = [case for case in varied if case.meta["field_of_view"]["slab_mm"] is not None]
    narrow = [case for case in varied if case.meta["field_of_view"]["narrow"] is not None]
    assert 4 <= len(slabs) <= 20 and 2 <= len(narrow) <= 18  # shares 0.5 and 0.4 of 24
    for case in slabs:
        extent = case.meta["field_of_view"]["slab_mm"]
        assert 40.0 <= extent <= 250.0
        canonical = to_canonical(case.label, case.geometry)[1].canonical
        z_mm = (canonical.size[2] - 1) * canonical.spacing[2]
        # the grid spans the slab to within a slice (or the 8-slice minimum)
        assert abs(z_mm - extent) <= canonical.spacing[2] or canonical.size[2] == 8, (extent, z_mm)
    for case in narrow:
        canonical = to_canonical(case.label, case.geometry)[1].canonical
        low, high = sorted(canonical.size[:2])
        assert all(0.6 <= f <= 1.0 for f in case.meta["field_of_view"]["narrow"])
        assert low >= 0.6 * 128 - 1 and high <= 160
    for case in varied:  # every slab lies over the organs: something is always there to segment
        assert case.label.any()


def test_removed_organs_are_absent_and_the_rest_keep_their_sides(varied):
    removed = [name for case in varied for name in case.meta["organs_removed"]]
    assert set(removed) <= {"gallbladder", "right_kidney", "left_kidney", "spleen"} and "gallbladder" in removed
    for case in varied:
        present = set(np.unique(case.label).tolist())
        for name in case.meta["organs_removed"]:
            assert ORGAN_IDS[name] not in present
        c = {organ: centroid_lps(case.label, case.geometry, organ) for organ in ("liver", "spleen") if
             ORGAN_IDS[organ] in present}  # fmt: skip
        if len(c) == 2 and case.meta["full_field"]:
            assert c["liver"][0] < c["spleen"][0]  # moved, never swapped


def test_varied_anatomy_scatters_organ_sizes_more():
    def liver_ml(case) -> float:
        return float((case.label == ORGAN_IDS["liver"]).sum() * voxel_ml(case.geometry))

    # the same patients, full fields, realistic and varied
    realistic = [liver_ml(generate_case(seed, "small")) for seed in range(12)]
    spread = []
    for seed in range(12):
        case = generate_case(seed, "small", vary=True, geometry=generate_case(seed, "small").geometry)
        spread.append(liver_ml(case))
    assert np.std(spread) > 1.3 * np.std(realistic)


def test_dataset_varies_training_cases_only(tmp_path):
    records = write_dataset(tmp_path / "v", labeled=2, unlabeled=1, val=2, seed=5, vary=True, progress=False)
    plain = write_dataset(tmp_path / "p", labeled=2, unlabeled=1, val=2, seed=5, progress=False)
    for varied_record, plain_record in zip(records, plain, strict=True):
        assert ("field_of_view" in varied_record) == (varied_record["split"] != "val")
        # the validation cases are the realistic ones, voxel for voxel
        assert (varied_record["split"] == "val") == (
            varied_record["size_xyz"] == plain_record["size_xyz"]
            and varied_record["organ_voxels"] == plain_record["organ_voxels"]
        )
        if varied_record["split"] == "val":
            name = f"{varied_record['id']}_0000.nii.gz"
            assert (tmp_path / "v/val_images" / name).read_bytes() == (tmp_path / "p/val_images" / name).read_bytes()


def test_randomised_domains_and_tissue_values_stay_in_their_ranges():
    rng = np.random.default_rng(0)
    seen_reversed = False
    for _ in range(200):
        domain = sample_randomised_domain(rng)
        assert domain.randomised and domain.phase in PHASES
        assert 5.0 <= domain.noise_sigma_hu <= 60.0 and -40.0 <= domain.hu_offset <= 40.0
        assert 0.3 <= domain.blur_mm <= 1.5 and 0.0 <= domain.bias_hu <= 60.0
        assert domain.slice_mm == 0.0 or 1.0 <= domain.slice_mm <= 5.0
        table = hu_lookup(domain, rng)
        assert table[Tissue.AIR] == HU_TABLE[Tissue.AIR][0] and table[255] == HU_MIN + np.float32(domain.hu_offset)
        table -= np.float32(domain.hu_offset)
        for code, values in HU_TABLE.items():
            if code == Tissue.AIR:
                continue
            value = table[code]
            if code in (Tissue.GAS, Tissue.TABLE, Tissue.LUNG):
                assert value == pytest.approx(values[0], abs=1e-3)  # physics, not contrast
            elif code == Tissue.BONE_CORTEX:
                assert 400.0 <= value <= 1500.0 + 1e-3
            else:
                low, high = min(values) - RANDOMISED_MARGIN_HU, max(values) + RANDOMISED_MARGIN_HU
                inside = low - 1e-3 <= value <= high + 1e-3
                if code >= ORGAN_BASE and not inside:
                    assert SOFT_TISSUE_HU[0] <= value <= SOFT_TISSUE_HU[1]
                    seen_reversed = True
                else:
                    assert inside, (Tissue(code).name if code < ORGAN_BASE else code, value, low, high)
    assert seen_reversed


def test_arms_lie_at_the_sides_in_about_their_share_of_the_varied_cases(varied):
    with_arms = [case for case in varied if case.meta["arms"] is not None]
    assert 2 <= len(with_arms) <= 14  # share 0.3 of 24
    for case in with_arms:
        arms = case.meta["arms"]
        assert arms["x"] - arms["rx"] >= 120.0  # beside the trunk (its flank is >= 130 mm out), never in it
    plain = generate_case(3, "small")
    assert "arms" not in plain.meta


def test_the_body_region_drops_a_phantoms_arms_and_keeps_every_organ(varied):
    from segcore.volumes.body_region import body_mask

    checked = 0
    for case in varied:
        arms = case.meta["arms"]
        if arms is None or case.meta["field_of_view"]["narrow"] is not None:
            continue  # a narrow field may leave the arms out
        canonical, reorientation = to_canonical(case.image, case.geometry)
        labels, _ = to_canonical(case.label, case.geometry)
        spacing = reorientation.canonical.spacing_zyx
        mask = body_mask(canonical, spacing)
        assert mask[labels > 0].all()
        dropped_ml = ((canonical > -500) & ~mask).sum() * np.prod(spacing) / 1000
        arms_ml = 2 * np.pi * arms["rx"] * arms["ry"] * canonical.shape[0] * spacing[0] / 1000
        assert dropped_ml >= 0.6 * arms_ml, (dropped_ml, arms_ml)
        checked += 1
    assert checked >= 1
