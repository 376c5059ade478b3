"""The preview picture: decoded, its slices show each organ's colour where the organ is."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from segcore.labels import ORGAN_COLORS, ORGAN_IDS
from segcore.outputs.preview import PANEL_HEIGHT, render_preview
from segcore.volumes import read_label_map, read_volume
from segcore.volumes.geometry import Geometry


def colour_mask(picture: np.ndarray, organ: int) -> np.ndarray:
    return (picture == np.array(ORGAN_COLORS[organ], np.uint8)).all(axis=2)


def test_a_preview_of_the_real_ct_shows_its_organs_and_the_note(real_data):
    image, geometry = read_volume(real_data / "abdomen_ct_3mm.nii.gz")
    labels, _ = read_label_map(real_data / "abdomen_ct_3mm_labels.nii.gz")
    preview = render_preview(image, labels, geometry, note="QC review: fine-stage entropy 0.117 > 0.065")
    picture = np.asarray(Image.open(io.BytesIO(preview.png)).convert("RGB"))
    assert picture.shape[0] >= PANEL_HEIGHT and set(preview.panels) == {"axial", "coronal", "sagittal"}
    left, top, width, height = preview.panels["axial"]
    axial = picture[top : top + height, left : left + width]
    assert colour_mask(axial, ORGAN_IDS["liver"]).sum() > 50  # the liver's outline crosses the axial slice
    assert colour_mask(picture, ORGAN_IDS["esophagus"]).sum() == 0  # absent from the labels: nowhere
    assert (picture[..., 0] > 200)[:, -300:].any()  # the note, in red, in the legend


def test_organs_are_drawn_where_they_are_on_the_patients_side():
    # a uniform 40 HU body; liver on the patient's right (canonical x small), spleen on the left
    image = np.full((20, 64, 64), 40, np.int16)
    labels = np.zeros(image.shape, np.uint8)
    labels[5:15, 20:40, 4:20] = ORGAN_IDS["liver"]
    labels[5:15, 20:40, 44:60] = ORGAN_IDS["spleen"]
    identity = Geometry(
        size=(64, 64, 20), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel())
    )
    preview = render_preview(image, labels, identity)
    picture = np.asarray(Image.open(io.BytesIO(preview.png)).convert("RGB"))
    left, top, width, height = preview.panels["axial"]
    axial = picture[top : top + height, left : left + width]
    liver_columns = np.nonzero(colour_mask(axial, ORGAN_IDS["liver"]).any(axis=0))[0]
    spleen_columns = np.nonzero(colour_mask(axial, ORGAN_IDS["spleen"]).any(axis=0))[0]
    assert liver_columns.max() < width / 2 < spleen_columns.min()  # radiological: the patient's right on the left
    grey = (40 + 160) / 400 * 255  # 40 HU at window (-160, 240)
    inside = np.round(0.6 * grey + 0.4 * np.array(ORGAN_COLORS[ORGAN_IDS["liver"]])).astype(np.uint8)
    assert (axial == inside).all(axis=2).sum() > 100  # the liver's area: 40 % colour over the grey CT
