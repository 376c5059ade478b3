"""What the coarse stage's answer grid costs in box and in accuracy: full against half resolution.

Run from the repository root::

    .venv/bin/python -m experiments.coarse_resolution                  # the default model, 10 held-out phantoms
    .venv/bin/python -m experiments.coarse_resolution --weights runs/my_model --phantoms 20

The coarse stage exists to find the organs' box. Three answer grids of the same coarse nets:

* ``full``: the nets' full-resolution output (every net of this project since full resolution);
* ``half``: their half-resolution logits (``forward(x, half_resolution=True)``: the residual
  nets' half-resolution head, else deep supervision's level-0 head), softmax and argmax on
  half the coarse input's grid, the full-resolution stage never run;
* ``half, upsampled``: the same logits upsampled trilinearly ×2 to the coarse input's grid
  before the softmax (for a residual net: its full answer without the full-resolution correction).

Per case: the organs' box (before the margin) of each grid against the true labels' box, face by
face in mm (signed: positive is outside the truth on that face), whether the crop (box plus
margin) holds every organ voxel of the truth, the final mask's DSC per organ (the FLARE22
script, :func:`segcore.evaluate.metrics.score_case`), the voxels whose label differs from the
``full`` mask, and the coarse stage's seconds. Cases: ``--phantoms`` small held-out phantoms of
the model card's second set (seed 2023) and the two real labelled CTs (measurement only: nothing
is chosen on them; their labels are another tool's output). Paired differences against ``full``
over the phantoms with a 95 % bootstrap interval. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from testkit import REAL_DATA as REAL

REPO_ROOT = Path(__file__).resolve().parents[1]
GRIDS = ("full", "half", "half, upsampled")
BOOTSTRAP = 10_000
FACES = ("z0", "z1", "y0", "y1", "x0", "x1")


class UpsampledHalf(torch.nn.Module):
    """A coarse net answering with its half-resolution logits upsampled ×2 (trilinear) to its input's grid."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.net(x, half_resolution=True), scale_factor=2, mode="trilinear", align_corners=False)


def predictors(weights: Path) -> dict:
    """The default-settings predictor of ``weights`` for each of :data:`GRIDS`."""
    from segcore.inference.predictor import Predictor

    built = {
        "full": Predictor.from_weights(weights, "cpu", coarse_resolution="full"),
        "half": Predictor.from_weights(weights, "cpu", coarse_resolution="half"),
        "half, upsampled": Predictor.from_weights(weights, "cpu", coarse_resolution="full"),
    }
    if not built["half"].locator.model.half_resolution:
        raise SystemExit(f"{weights}: the coarse nets have no half-resolution answer; nothing to compare")
    model = built["half, upsampled"].locator.model
    model.nets = [UpsampledHalf(net) for net in model.nets]
    return built


def face_errors_mm(box, truth_box, spacing_zyx) -> list[float]:
    """Per face (z0, z1, y0, y1, x0, x1) how far ``box`` lies outside ``truth_box``, in mm (negative: inside)."""
    errors = []
    for (start, stop), (true_start, true_stop), spacing in zip(box, truth_box, spacing_zyx, strict=True):
        errors += [(true_start - start) * spacing, (stop - true_stop) * spacing]
    return [round(float(e), 2) for e in errors]


def measure_case(built: dict, image_path: Path, truth: np.ndarray) -> dict:
    """Every grid's box, crop coverage, DSC per organ, changed voxels and coarse seconds on one case."""
    from segcore.evaluate.metrics import score_case
    from segcore.inference.boxes import foreground_box
    from segcore.volumes import read_volume
    from segcore.volumes.geometry import to_canonical

    image, geometry = read_volume(image_path)
    canonical_image, reorientation = to_canonical(image, geometry)
    spacing = reorientation.canonical.spacing_zyx
    truth_box = foreground_box(to_canonical(truth, geometry)[0])
    record, masks = {}, {}
    for grid, predictor in built.items():
        timings: dict[str, float] = {}
        started = time.perf_counter()
        coarse = predictor.locator.locate(np.asarray(canonical_image), spacing, timings)
        seconds = time.perf_counter() - started
        prediction = predictor.predict(image, geometry)
        masks[grid] = prediction.labels
        scores = score_case(truth, prediction.labels, geometry.spacing_zyx)
        present = [organ for organ in scores if (truth == organ).any()]
        holds = coarse.box is not None and all(
            start <= true_start and true_stop <= stop
            for (start, stop), (true_start, true_stop) in zip(coarse.box, truth_box, strict=True)
        )
        record[grid] = {
            "faces_mm": None if coarse.organ_box is None else face_errors_mm(coarse.organ_box, truth_box, spacing),
            "crop_holds_truth": holds,
            "dsc": {int(organ): round(scores[organ].dsc, 4) for organ in present},
            "mean_dsc": round(float(np.mean([scores[o].dsc for o in present])), 4),
            "coarse_seconds": round(seconds, 4),
            "verdict": prediction.quality.verdict,
        }
    for grid in built:
        record[grid]["voxels_changed"] = int(np.count_nonzero(masks[grid] != masks["full"]))
    record["voxels"] = int(truth.size)
    return record


def real_cases() -> dict[str, tuple[Path, np.ndarray]]:
    from experiments.real_ct import labels_on_grid
    from segcore.volumes import read_label_map

    return {
        "real 3 mm CT": (REAL / "abdomen_ct_3mm.nii.gz", read_label_map(REAL / "abdomen_ct_3mm_labels.nii.gz")[0]),
        "real DICOM series": (
            REAL / "abdomen_ct_dicom",
            labels_on_grid(REAL / "abdomen_ct_dicom_labels.nii.gz", REAL / "abdomen_ct_dicom"),
        ),
    }


def measure(weights: Path, phantoms: int) -> dict:
    from segcore.phantom import write_dataset
    from segcore.volumes import read_label_map

    built = predictors(weights)
    cases = {}
    with tempfile.TemporaryDirectory() as folder:
        write_dataset(folder, labeled=0, unlabeled=0, val=phantoms, size="small", seed=2023)
        for image_path in sorted((Path(folder) / "val_images").iterdir()):
            truth, _ = read_label_map(Path(folder) / "val_mask" / image_path.name.replace("_0000", ""))
            cases[f"phantom {image_path.name.split('_0000')[0]}"] = measure_case(built, image_path, truth)
            print(f"{list(cases)[-1]}: " + summary_line(cases[list(cases)[-1]]), flush=True)
    for name, (path, truth) in real_cases().items():
        cases[name] = measure_case(built, path, truth)
        print(f"{name}: " + summary_line(cases[name]), flush=True)
    info = built["full"].info()
    return {
        "weights": str(weights),
        "coarse_input": info["coarse"]["input_size"],
        "half_grid": built["half"].info()["coarse"]["output_size"],
        "phantoms": phantoms,
        "cases": cases,
    }


def summary_line(case: dict) -> str:
    return "  ".join(
        f"{grid}: DSC {case[grid]['mean_dsc']:.4f}, max face {max(map(abs, case[grid]['faces_mm'] or [0])):.1f} mm, "
        f"changed {case[grid]['voxels_changed']}"
        for grid in GRIDS
    )


def report(record: dict) -> str:
    """The printed figures: per grid over the phantoms and per real scan."""
    rng = np.random.default_rng(0)
    phantoms = {name: case for name, case in record["cases"].items() if name.startswith("phantom")}
    lines = [
        f"weights {record['weights']}: coarse input {record['coarse_input']}, half grid {record['half_grid']}",
        f"{'grid':<18}{'mean DSC':>10}{'vs full (95 % CI)':>30}{'|face| median/max mm':>24}{'crop holds truth':>18}"
        f"{'changed voxels':>16}{'coarse s':>10}",
    ]
    full = np.array([case["full"]["mean_dsc"] for case in phantoms.values()])
    for grid in GRIDS:
        dsc = np.array([case[grid]["mean_dsc"] for case in phantoms.values()])
        difference = dsc - full
        means = difference[rng.integers(0, len(difference), (BOOTSTRAP, len(difference)))].mean(1)
        low, high = np.percentile(means, [2.5, 97.5])
        faces = np.abs([f for case in phantoms.values() for f in case[grid]["faces_mm"] or []])
        holds = sum(case[grid]["crop_holds_truth"] for case in phantoms.values())
        changed = sum(case[grid]["voxels_changed"] for case in phantoms.values())
        voxels = sum(case["voxels"] for case in phantoms.values())
        seconds = np.median([case[grid]["coarse_seconds"] for case in phantoms.values()])
        lines.append(
            f"{grid:<18}{dsc.mean():>10.4f}{f'{difference.mean():+.4f} [{low:+.4f}, {high:+.4f}]':>30}"
            f"{f'{np.median(faces):.1f} / {faces.max():.1f}':>24}{f'{holds}/{len(phantoms)}':>18}"
            f"{f'{changed / voxels:.3%}':>16}{seconds:>10.3f}"
        )
    for name, case in record["cases"].items():
        if name.startswith("phantom"):
            continue
        lines.append(f"{name}:")
        for grid in GRIDS:
            faces = " ".join(f"{face} {value:+.1f}" for face, value in zip(FACES, case[grid]["faces_mm"] or []))
            lines.append(
                f"  {grid:<16} mean DSC {case[grid]['mean_dsc']:.4f}  faces mm {faces}  crop holds truth "
                f"{case[grid]['crop_holds_truth']}  changed voxels {case[grid]['voxels_changed']} "
                f"({case[grid]['voxels_changed'] / case['voxels']:.3%})  verdict {case[grid]['verdict']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="experiments.coarse_resolution", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "model_weights")
    parser.add_argument("--phantoms", type=int, default=10, help="held-out small phantoms (seed 2023)")
    parser.add_argument("--out", type=Path, help="also write the record as JSON here")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    record = measure(args.weights.resolve(), args.phantoms)
    print(report(record))
    if args.out is not None:
        args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
