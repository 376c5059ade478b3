"""The embedded sample: one synthetic CT segmented with the default model and scored against its truth.

``sh predict.sh`` with no ``-i``/``-o`` runs :func:`run_sample`: it writes a medium-size phantom CT
(fixed seed) to the sample folder if absent (:func:`default_sample_dir`: ``dataset/sample/`` in a
checkout, ``./segcore-sample/`` for an installed package), segments it with the default weights (or
``--weights DIR``), writes the mask to its ``predictions/`` folder, and prints each organ's
predicted and true volume and its Dice similarity coefficient (DSC, FLARE22 protocol:
:func:`segcore.evaluate.metrics.score_case`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from segcore.evaluate import score_files
from segcore.inference.predictor import Predictor
from segcore.labels import ORGANS
from segcore.volumes import read_label_map, write_volume

SAMPLE_SEED = 2022
SAMPLE_ID = "sample"


def default_sample_dir() -> Path:
    """``dataset/sample/`` in a checkout (beside ``pyproject.toml``); ``segcore-sample/`` in the current
    folder where the package is installed (site-packages is no place for data)."""
    root = Path(__file__).resolve().parents[1]
    return root / "dataset" / "sample" if (root / "pyproject.toml").is_file() else Path.cwd() / "segcore-sample"


def sample_paths(sample_dir: Path) -> tuple[Path, Path]:
    """``(image, ground truth)`` of the sample: ``images/sample_0000.nii.gz``, ``labels/sample.nii.gz``."""
    return sample_dir / "images" / f"{SAMPLE_ID}_0000.nii.gz", sample_dir / "labels" / f"{SAMPLE_ID}.nii.gz"


def ensure_sample(sample_dir: Path) -> tuple[Path, Path]:
    """Write the sample phantom (medium size, every organ in the field of view) unless it exists."""
    image_path, label_path = sample_paths(sample_dir)
    if not (image_path.is_file() and label_path.is_file()):
        from segcore.phantom import generate_case

        phantom = generate_case(SAMPLE_SEED, size="medium", full_field=True)
        write_volume(image_path, phantom.image, phantom.geometry)
        write_volume(label_path, phantom.label, phantom.geometry)
    return image_path, label_path


def run_sample(
    weights_dir: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    sample_dir: Path | None = None,
) -> int:
    """Segment the sample and print per-organ volumes and DSC. Returns the exit status (2: no weights)."""
    try:
        predictor = Predictor.from_weights(weights_dir, device, precision)
    except (OSError, ValueError) as error:
        print(f"predict: {error}", file=sys.stderr)
        return 2
    sample_dir = default_sample_dir() if sample_dir is None else sample_dir
    image_path, label_path = ensure_sample(sample_dir)
    prediction, _, geometry = predictor.predict_file(image_path)
    output = sample_dir / "predictions" / f"{SAMPLE_ID}.nii.gz"
    write_volume(output, prediction.labels, geometry)
    scores = score_files(output, label_path)
    truth, _ = read_label_map(label_path)
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    predicted_counts = np.bincount(prediction.labels.ravel(), minlength=len(ORGANS) + 1)
    true_counts = np.bincount(truth.ravel(), minlength=len(ORGANS) + 1)
    print(f"sample CT {image_path} ({'x'.join(map(str, geometry.size))} voxels) -> {output}")
    print(f"{'organ':<22}{'predicted mL':>14}{'true mL':>10}{'DSC':>8}")
    for organ, name in ORGANS.items():
        predicted, true = predicted_counts[organ] * voxel_ml, true_counts[organ] * voxel_ml
        print(f"{name:<22}{predicted:>14.1f}{true:>10.1f}{scores[organ].dsc:>8.3f}")
    print(f"{'mean DSC':<46}{np.mean([score.dsc for score in scores.values()]):>8.3f}")
    for warning in prediction.warnings:
        print(f"warning: {warning}")
    timings = prediction.timings
    print(f"segmented in {timings['total']:.2f} s on {predictor.device} (reading took {timings['read']:.2f} s)")
    return 0
