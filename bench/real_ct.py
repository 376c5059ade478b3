"""How a model does on the real labelled CTs, next to its held-out phantom figures.

Run from the repository root::

    .venv/bin/python -m bench.real_ct                       # the default model, 10 held-out phantoms
    .venv/bin/python -m bench.real_ct --weights runs/my_model --phantoms 4

Real scans (``../shared/data/real``, measurement only: never train on them or choose anything
with them): the 3 mm abdominal CT with its labels, and the 20-slice DICOM series with its
labels, which are stored on the same physical grid with the y axis flipped and are brought onto
the series' grid by nearest-neighbour resampling (exact: the voxel centres coincide). Phantoms:
``--phantoms`` small held-out cases of the model card's second set (seed 2023). Scores follow
the FLARE22 script (:func:`segcore.evaluate.metrics.score_case`, no NSD rule): per organ DSC and NSD, the
mean over the organs the ground truth holds, and the mean over all 13 (an organ absent from both
masks counts 1, from one of them 0). The labels of the real files are another tool's output
remapped to FLARE22 ids, not manual annotation (their README). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL = REPO_ROOT.parent / "shared" / "data" / "real"


def labels_on_grid(path: Path, reference: Path) -> np.ndarray:
    """The label file resampled (nearest neighbour) onto the grid of the image at ``reference``."""
    import SimpleITK as sitk

    from segcore.volumes import dicom_series_files

    labels = sitk.ReadImage(str(path))
    if reference.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(p) for p in dicom_series_files(reference)])
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(reference))
    resampled = sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    return sitk.GetArrayFromImage(resampled).astype(np.uint8)


def score(predictor, image_path: Path, truth: np.ndarray) -> dict:
    """Per organ DSC/NSD of the prediction on ``image_path`` against ``truth`` (on its grid)."""
    from segcore.evaluate.metrics import score_case

    prediction, _, geometry = predictor.predict_file(image_path)
    scores = score_case(truth, prediction.labels, geometry.spacing_zyx)
    present = [organ for organ in scores if (truth == organ).any()]
    return {
        "organs": scores,
        "present": present,
        "mean_present": float(np.mean([scores[o].dsc for o in present])),
        "mean_13": float(np.mean([s.dsc for s in scores.values()])),
        "verdict": prediction.quality.verdict,
    }


def phantom_scores(predictor, count: int) -> dict | None:
    """Mean DSC per organ over ``count`` small held-out phantoms (seed 2023, as the model card)."""
    if count <= 0:
        return None
    from segcore.evaluate.metrics import score_case
    from segcore.phantom import write_dataset

    with tempfile.TemporaryDirectory() as folder:
        write_dataset(folder, labeled=0, unlabeled=0, val=count, size="small", seed=2023)
        per_organ: dict[int, list[float]] = {}
        for image_path in sorted((Path(folder) / "val_images").iterdir()):
            truth_path = Path(folder) / "val_mask" / image_path.name.replace("_0000", "")
            prediction, _, geometry = predictor.predict_file(image_path)
            from segcore.volumes import read_label_map

            truth, _ = read_label_map(truth_path)
            for organ, organ_score in score_case(truth, prediction.labels, geometry.spacing_zyx).items():
                per_organ.setdefault(organ, []).append(organ_score.dsc)
    return {organ: float(np.mean(values)) for organ, values in per_organ.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "model_weights")
    parser.add_argument("--phantoms", type=int, default=10, help="held-out small phantoms to score (0: none)")
    args = parser.parse_args()

    from segcore.inference.predictor import Predictor
    from segcore.labels import ORGANS
    from segcore.volumes import read_label_map

    predictor = Predictor.from_weights(args.weights, "cpu")
    ct, _ = read_label_map(REAL / "abdomen_ct_3mm_labels.nii.gz")
    results = {
        "real 3 mm CT": score(predictor, REAL / "abdomen_ct_3mm.nii.gz", ct),
        "real DICOM series": score(
            predictor, REAL / "abdomen_ct_dicom", labels_on_grid(REAL / "abdomen_ct_dicom_labels.nii.gz",
                                                                 REAL / "abdomen_ct_dicom")),
    }  # fmt: skip
    phantoms = phantom_scores(predictor, args.phantoms)
    names = list(results)
    header = f"{'organ':<22}" + "".join(f"{name + ' DSC':>24}" for name in names)
    header += f"{f'phantoms ({args.phantoms}) DSC':>24}" if phantoms else ""
    print(f"weights {args.weights} ({predictor.info()['precision']})\n{header}")
    for organ, organ_name in ORGANS.items():
        row = f"{organ_name:<22}"
        for name in names:
            result = results[name]
            cell = f"{result['organs'][organ].dsc:.4f}" if organ in result["present"] else "absent"
            row += f"{cell:>24}"
        row += f"{phantoms[organ]:>24.4f}" if phantoms else ""
        print(row)
    print(f"{'mean (organs present)':<22}" + "".join(f"{results[n]['mean_present']:>24.4f}" for n in names)
          + (f"{np.mean(list(phantoms.values())):>24.4f}" if phantoms else ""))  # fmt: skip
    print(f"{'mean (13 organs)':<22}" + "".join(f"{results[n]['mean_13']:>24.4f}" for n in names))
    print(f"{'quality verdict':<22}" + "".join(f"{results[n]['verdict']:>24}" for n in names))


if __name__ == "__main__":
    main()
