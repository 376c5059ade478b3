"""Finding the cases of a FLARE22-layout data root."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from segcore.volumes import case_id, is_nifti

SPLIT_FOLDERS = {
    "labeled": ("train_images", "train_mask"),
    "unlabeled": ("trainu_images", None),
    "test": ("val_images", "val_mask"),
}
"""Split name -> (image folder, label folder) under the data root."""


@dataclass(frozen=True)
class CaseSource:
    """One case to prepare: paths are relative to the data root."""

    id: str
    split: str
    image_path: str
    label_path: str | None


def _entries(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and (p.is_dir() or is_nifti(p)))


def find_cases(data_root: Path) -> tuple[list[CaseSource], dict[str, str]]:
    """List every case under ``data_root``.

    Returns:
        ``(cases, problems)``: the usable cases, and ``{case id: reason}`` for listed cases
        that cannot be prepared (a labeled case whose mask is missing, an id that occurs twice).
    """
    found: dict[str, list[CaseSource]] = defaultdict(list)
    problems: dict[str, str] = {}
    for split, (image_folder, label_folder) in SPLIT_FOLDERS.items():
        for image in _entries(data_root / image_folder):
            identifier = case_id(image)
            label_path = None
            if label_folder is not None:
                candidates = [data_root / label_folder / f"{identifier}{suffix}" for suffix in (".nii.gz", ".nii")]
                label = next((c for c in candidates if c.exists()), None)
                if label is not None:
                    label_path = str(label.relative_to(data_root))
                elif split == "labeled":
                    problems[identifier] = f"{image.relative_to(data_root)}: label file {candidates[0]} is missing"
            source = CaseSource(identifier, split, str(image.relative_to(data_root)), label_path)
            found[identifier].append(source)
    cases = []
    for identifier, sources in sorted(found.items()):
        if len(sources) > 1:
            paths = ", ".join(s.image_path for s in sources)
            problems[identifier] = f"duplicate case id {identifier!r}: {paths}"
        elif identifier not in problems:
            cases.append(sources[0])
    return cases, problems
