"""The body region: the trunk kept, arms, the table and cushions outside it set to air."""

from __future__ import annotations

import numpy as np
import pytest

from segcore.volumes.body_region import AIR_HU, body_mask, keep_body

SPACING = (3.0, 1.5, 1.5)


def torso_with_arms_and_table(arm_gap_mm: float = 10.0, contact_mm: float = 0.0) -> dict[str, np.ndarray]:
    """A 40 x 160 x 200 canonical volume (z, y, x; y posterior) of a trunk with lungs at the top,
    two arms beside it and a table under its back; with ``contact_mm`` > 0 the right arm touches
    the flank over a strip that thick (in z) and the table touches the back through a cushion."""
    z, y, x = np.ogrid[:40, :160, :200]
    yy, xx = (y - 80) * SPACING[1], (x - 100) * SPACING[2]
    trunk = (xx / 100.0) ** 2 + (yy / 70.0) ** 2 <= 1.0
    trunk = np.broadcast_to(trunk, (40, 160, 200))
    lungs = trunk & (z >= 30) & (((np.abs(xx) - 45) / 30.0) ** 2 + (yy / 40.0) ** 2 <= 1.0)
    arm_x = 100.0 + arm_gap_mm + 25.0
    arms = np.broadcast_to(((np.abs(xx) - arm_x) / 25.0) ** 2 + ((yy - 10) / 30.0) ** 2 <= 1.0, (40, 160, 200))
    table = np.broadcast_to((yy >= 80) & (yy <= 95) & (np.abs(xx) <= 140), (40, 160, 200))
    image = np.full((40, 160, 200), AIR_HU, dtype=np.float32)
    image[trunk] = 20.0
    image[lungs] = -850.0
    image[arms] = 40.0
    image[table] = 300.0
    if contact_mm:
        strip = (z < contact_mm / SPACING[0]) & (np.abs(yy - 10) <= 3)
        bridge = strip & (xx > 90) & (xx < arm_x)
        image[bridge] = 20.0
        cushion = (z < contact_mm / SPACING[0]) & (np.abs(xx) <= 3) & (yy > 60) & (yy < 85)
        image[np.broadcast_to(cushion, image.shape)] = -100.0
    return {"image": image, "trunk": trunk, "lungs": lungs, "arms": arms, "table": table}


@pytest.mark.parametrize("contact_mm", [0.0, 6.0], ids=["apart", "touching"])
def test_the_trunk_is_kept_with_its_lungs_and_arms_and_table_are_not(contact_mm):
    case = torso_with_arms_and_table(contact_mm=contact_mm)
    mask = body_mask(case["image"], SPACING)
    assert mask.shape == case["image"].shape
    assert mask[case["trunk"]].all()  # skin included, lungs filled in
    # apart: nothing of them; touching: at most the one-voxel margin of the mask's 4 mm grid at the contact
    allowed = 0.0 if not contact_mm else 0.02
    assert mask[case["arms"]].mean() <= allowed and mask[case["table"]].mean() <= allowed
    kept = keep_body(case["image"], mask)
    assert (kept[case["arms"] & ~mask] == AIR_HU).all() and (kept[case["table"] & ~mask] == AIR_HU).all()
    np.testing.assert_array_equal(kept[case["trunk"]], case["image"][case["trunk"]])


def test_a_volume_without_body_has_no_mask_and_is_left_as_it_is():
    air = np.full((8, 16, 16), AIR_HU, dtype=np.float32)
    assert body_mask(air, SPACING) is None
    assert keep_body(air, None) is air


def test_on_a_real_scan_every_labelled_organ_lies_inside_the_body(real_data):
    from segcore.volumes import read_label_map, read_volume
    from segcore.volumes.geometry import to_canonical

    image, geometry = read_volume(real_data / "abdomen_ct_3mm.nii.gz")
    labels, _ = read_label_map(real_data / "abdomen_ct_3mm_labels.nii.gz")
    canonical, reorientation = to_canonical(image, geometry)
    canonical_labels, _ = to_canonical(labels, geometry)
    mask = body_mask(canonical, reorientation.canonical.spacing_zyx)
    assert mask[canonical_labels > 0].all()
    above = canonical > -500
    # the mask drops part of what is dense outside the trunk (the table) and keeps the trunk's air
    assert (above & ~mask).any()
    assert mask.sum() < above.sum() * 1.5
