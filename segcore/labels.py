"""The FLARE22 label map and the intensity defaults: the one place that owns them.

Label ids follow the FLARE22 challenge: 0 is background, 1..13 are organs.
Networks output ``NUM_CLASSES`` channels (background + 13 organs).
"""

from __future__ import annotations

ORGANS: dict[int, str] = {
    1: "liver",
    2: "right_kidney",
    3: "spleen",
    4: "pancreas",
    5: "aorta",
    6: "ivc",
    7: "right_adrenal_gland",
    8: "left_adrenal_gland",
    9: "gallbladder",
    10: "esophagus",
    11: "stomach",
    12: "duodenum",
    13: "left_kidney",
}
"""Organ id -> name, in FLARE22 order."""

LABEL_NAMES: dict[int, str] = {0: "background", **ORGANS}
"""Every label id (background included) -> name."""

NUM_ORGANS = len(ORGANS)
NUM_CLASSES = NUM_ORGANS + 1
MAX_LABEL = NUM_ORGANS

ORGAN_IDS: dict[str, int] = {name: label for label, name in ORGANS.items()}
"""Organ name -> id."""

LEFT_RIGHT_PAIRS: tuple[tuple[int, int], ...] = ((2, 13), (7, 8))
"""(right, left) organ ids that swap under a left-right flip."""

HU_WINDOW: tuple[float, float] = (-325.0, 325.0)
"""Default CT intensity window in HU, applied before z-scoring."""

ORGAN_CODES: dict[int, tuple[str, str, str | None]] = {
    1: ("10200004", "Liver", None),
    2: ("64033007", "Kidney", "Right"),
    3: ("78961009", "Spleen", None),
    4: ("15776009", "Pancreas", None),
    5: ("15825003", "Aorta", None),
    6: ("64131007", "Inferior vena cava", None),
    7: ("23451007", "Adrenal gland", "Right"),
    8: ("23451007", "Adrenal gland", "Left"),
    9: ("28231008", "Gallbladder", None),
    10: ("32849002", "Esophagus", None),
    11: ("69695003", "Stomach", None),
    12: ("38848004", "Duodenum", None),
    13: ("64033007", "Kidney", "Left"),
}
"""Organ id -> SNOMED CT ``(code, meaning, laterality)`` of its segmented property type, as DICOM
codes it (category: Anatomical Structure, SCT 91723000; a paired organ is one code with a
laterality modifier, Right SCT 24028007 / Left SCT 7771000). Checked against pydicom's SCT
dictionary by a test."""
LATERALITY_CODES: dict[str, str] = {"Right": "24028007", "Left": "7771000"}

ORGAN_COLORS: dict[int, tuple[int, int, int]] = {
    1: (220, 100, 80),
    2: (180, 200, 60),
    3: (150, 90, 190),
    4: (250, 190, 90),
    5: (230, 40, 40),
    6: (40, 90, 230),
    7: (250, 240, 40),
    8: (190, 250, 120),
    9: (40, 170, 90),
    10: (230, 150, 200),
    11: (120, 220, 230),
    12: (170, 120, 60),
    13: (100, 160, 40),
}
"""Organ id -> display colour (sRGB): the preview's overlays and the DICOM-SEG's recommended colour."""

DISPLAY_WINDOW: tuple[float, float] = (-160.0, 240.0)
"""The abdominal soft-tissue window (level 40 HU, width 400 HU) the viewers open a CT with."""


def display_table() -> dict:
    """What a viewer needs to draw the labels: every organ's id, name and colour, and the CT window
    (the JSON behind the service's and the review station's ``/labels``)."""
    organs = [{"id": label, "name": name, "color": list(ORGAN_COLORS[label])} for label, name in ORGANS.items()]
    return {"organs": organs, "window": list(DISPLAY_WINDOW)}
