"""The ceiling an output grid puts on accuracy: the best answer a net can give at a given input size.

Run from the repository root::

    .venv/bin/python -m experiments.output_grid                       # the ssl, default and production sets
    .venv/bin/python -m experiments.output_grid --sets production_full --cases 3   # full-size phantoms (minutes)
    .venv/bin/python -m experiments.output_grid --sets ssl --cases 4  # one set, fewer phantoms

For every phantom of a set (held-out phantoms generated with the set's size and seed) and every
network input size, three label maps are built from the ground truth alone, brought back to the
case's grid and scored against it (DSC per organ, 1 where an organ is absent from both, the
FLARE22 convention; a case's score is its mean over the 13 organs):

- ``stored``: the labels as the store holds them (nearest-neighbour resize to the input size),
  brought back with nearest neighbours: what a perfect full-resolution net scores when its
  answer is restored as :mod:`experiments.ssl_gain` does.
- ``half_res``: the best *smooth* half-resolution answer: each organ's one-hot at the input size
  averaged 2×2×2 down to half of it, upsampled trilinearly ×2 (what a stride-2 net's last step
  does), argmax, brought back with nearest neighbours.
- ``full_res``: the best smooth full-resolution answer restored as the predictor restores one:
  each organ's one-hot on the case's grid resized trilinearly to the input size (soft
  probabilities at the input size), resized trilinearly back and argmaxed
  (:func:`segcore.inference.postprocess.resize_argmax`).

Coarse sizes are whole scans (canonical orientation, each axis resized to the size); fine sizes
are the organs' box plus 20 mm (as ``data_prepare`` crops with labels) resized to the size.

Sets: ``ssl`` (the SSL benchmark's small phantoms, coarse 32³ / 48³ / 64³), ``default`` (the
default model's medium phantoms, coarse 48³, fine 80³), ``production`` (medium phantoms at
the production sizes, coarse 160³, fine 192³: at or above the phantoms' own resolution) and
``production_full`` (full-size 512×512 phantoms at the production sizes, as FLARE22 scans are).
Prints a table (mean and the small or thin organs) and writes ``--out`` (JSON) if given.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segcore.evaluate.metrics import dice
from segcore.inference.boxes import DEFAULT_MARGIN_MM, expand_box, foreground_box
from segcore.inference.postprocess import resize_argmax
from segcore.labels import NUM_CLASSES, ORGANS
from segcore.volumes import read_label_map
from segcore.volumes.geometry import to_canonical
from segcore.volumes.resample import resize_image, resize_labels

SETS = {
    "ssl": {"size": "small", "seed": 0, "coarse": (32, 48, 64), "fine": ()},
    "default": {"size": "medium", "seed": 4242, "coarse": (48,), "fine": (80,)},
    "production": {"size": "medium", "seed": 4242, "coarse": (160,), "fine": (192,)},
    "production_full": {"size": "full", "seed": 4242, "coarse": (160,), "fine": (192,)},
}
SHOWN = ("right_adrenal_gland", "left_adrenal_gland", "ivc", "aorta", "esophagus", "gallbladder")
ANSWERS = ("stored", "half_res", "full_res")


def one_hot_at(labels: np.ndarray, size: tuple[int, int, int]) -> torch.Tensor:
    """``(C, *size)`` float32: each class's indicator resized trilinearly from ``labels``' grid."""
    planes = [resize_image((labels == c).astype(np.float32), size) for c in range(NUM_CLASSES)]
    return torch.stack(planes)


def answers(labels: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """The three label maps of the module docstring, on ``labels``' grid."""
    grid, shape = (size,) * 3, labels.shape
    stored = resize_labels(labels, grid)
    back = {"stored": resize_labels(stored, shape).numpy()}
    stored_one_hot = F.one_hot(stored.long(), NUM_CLASSES).movedim(-1, 0).float()[None]
    half = F.avg_pool3d(stored_one_hot, 2)
    upsampled = F.interpolate(half, scale_factor=2, mode="trilinear", align_corners=False)[0]
    back["half_res"] = resize_labels(upsampled.argmax(0).to(torch.uint8), shape).numpy()
    back["full_res"] = resize_argmax(one_hot_at(labels, grid), shape)
    return back


def organ_scores(gt: np.ndarray, prediction: np.ndarray) -> list[float]:
    return [dice(gt == organ, prediction == organ) for organ in ORGANS]


def score_set(name: str, cases: int) -> dict[str, dict[str, list[list[float]]]]:
    """``{"coarse 48": {"stored": [[13 DSC] per case], ...}, ...}`` of one set."""
    from segcore.phantom import write_dataset
    from segcore.volumes import read_volume

    spec = SETS[name]
    scores: dict[str, dict[str, list[list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="output_grid_") as folder:
        root = Path(folder)
        write_dataset(root, 0, 0, cases, spec["size"], spec["seed"], workers=2, progress=False)
        for image_path in sorted((root / "val_images").glob("*_0000.nii.gz")):
            gt, geometry = read_label_map(root / "val_mask" / image_path.name.replace("_0000", ""))
            _, image_geometry = read_volume(image_path)
            canonical, reorientation = to_canonical(gt, image_geometry)
            canonical = np.ascontiguousarray(canonical)
            for size in spec["coarse"]:
                for answer, labels in answers(canonical, size).items():
                    scores.setdefault(f"coarse {size}", {}).setdefault(answer, []).append(
                        organ_scores(canonical, labels)
                    )
            box = expand_box(
                foreground_box(canonical), DEFAULT_MARGIN_MM, reorientation.canonical.spacing_zyx, canonical.shape
            )
            region = tuple(slice(start, stop) for start, stop in box)
            for size in spec["fine"]:
                for answer, crop_labels in answers(canonical[region], size).items():
                    labels = np.zeros_like(canonical)
                    labels[region] = crop_labels
                    scores.setdefault(f"fine {size}", {}).setdefault(answer, []).append(organ_scores(canonical, labels))
            del geometry
    return scores


def table(name: str, scores: dict[str, dict[str, list[list[float]]]], cases: int) -> str:
    names = list(ORGANS.values())
    shown = [names.index(organ) for organ in SHOWN]
    lines = [f"{name} ({SETS[name]['size']} phantoms, {cases} cases): mean DSC; " + ", ".join(SHOWN)]
    for grid, by_answer in scores.items():
        for answer in ANSWERS:
            organs = np.array(by_answer[answer]).mean(0)
            lines.append(
                f"  {grid:<11}{answer:<10}{organs.mean():.4f}   " + " ".join(f"{organs[i]:.3f}" for i in shown)
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="experiments.output_grid", description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=["ssl", "default", "production"])
    parser.add_argument("--cases", type=int, default=8, help="held-out phantoms per set")
    parser.add_argument("--out", type=Path, help="JSON file for the per-case, per-organ figures")
    args = parser.parse_args(argv)
    figures = {}
    for name in args.sets:
        figures[name] = score_set(name, args.cases)
        print(table(name, figures[name], args.cases), flush=True)
    if args.out:
        args.out.write_text(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
