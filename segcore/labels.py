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
