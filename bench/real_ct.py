"""How a model does on the real labelled CTs, next to its held-out phantom figures.

Run from the repository root::

    .venv/bin/python -m bench.real_ct                       # the default model, 10 held-out phantoms
    .venv/bin/python -m bench.real_ct --weights runs/my_model --phantoms 4
    .venv/bin/python -m bench.real_ct --weights WORK/weights --results bench/results/real_ct.jsonl   # and keep them

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
import json
import sys
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


def measure(weights: Path, phantoms: int = 0) -> dict:
    """A results-file record of the weights on the two real scans (and ``phantoms`` held-out
    phantoms): per organ DSC (organs the truth holds; 4 decimals), the means, the quality verdict."""
    from segcore.inference.predictor import Predictor
    from segcore.labels import ORGANS
    from segcore.volumes import read_label_map

    predictor = Predictor.from_weights(weights, "cpu")
    ct, _ = read_label_map(REAL / "abdomen_ct_3mm_labels.nii.gz")
    results = {
        "real 3 mm CT": score(predictor, REAL / "abdomen_ct_3mm.nii.gz", ct),
        "real DICOM series": score(
            predictor, REAL / "abdomen_ct_dicom", labels_on_grid(REAL / "abdomen_ct_dicom_labels.nii.gz",
                                                                 REAL / "abdomen_ct_dicom")),
    }  # fmt: skip
    scans = {
        name: {
            "dsc": {ORGANS[organ]: round(result["organs"][organ].dsc, 4) for organ in result["present"]},
            "mean_present": round(result["mean_present"], 4),
            "mean_13": round(result["mean_13"], 4),
            "verdict": result["verdict"],
        }
        for name, result in results.items()
    }
    found = phantom_scores(predictor, phantoms)
    return {
        "weights": str(weights),
        "precision": predictor.info()["precision"],
        "scans": scans,
        "phantoms": found and {"count": phantoms, "dsc": {ORGANS[o]: round(v, 4) for o, v in found.items()}},
    }


def table(record: dict) -> str:
    """The printed table of a :func:`measure` record: organs by rows, scans (and phantoms) by columns."""
    from segcore.labels import ORGANS

    scans, phantoms = record["scans"], record["phantoms"]
    columns = [(f"{name} DSC", scan["dsc"]) for name, scan in scans.items()]
    if phantoms:
        columns.append((f"phantoms ({phantoms['count']}) DSC", phantoms["dsc"]))
    lines = [f"weights {record['weights']} ({record['precision']})",
             f"{'organ':<22}" + "".join(f"{title:>24}" for title, _ in columns)]  # fmt: skip
    for organ in ORGANS.values():
        cells = [f"{dsc[organ]:.4f}" if organ in dsc else "absent" for _, dsc in columns]
        lines.append(f"{organ:<22}" + "".join(f"{cell:>24}" for cell in cells))
    means = [scan["mean_present"] for scan in scans.values()]
    means += [float(np.mean(list(phantoms["dsc"].values())))] if phantoms else []
    lines.append(f"{'mean (organs present)':<22}" + "".join(f"{mean:>24.4f}" for mean in means))
    lines.append(f"{'mean (13 organs)':<22}" + "".join(f"{scan['mean_13']:>24.4f}" for scan in scans.values()))
    lines.append(f"{'quality verdict':<22}" + "".join(f"{scan['verdict']:>24}" for scan in scans.values()))
    return "\n".join(lines)


def append(record: dict, results: Path) -> None:
    """Append ``record`` (one JSON line) to ``results``."""
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as stream:
        stream.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.real_ct", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "model_weights")
    parser.add_argument("--phantoms", type=int, default=10, help="held-out small phantoms to score (0: none)")
    parser.add_argument("--results", type=Path, help="also append the figures to this JSON-lines file")
    args = parser.parse_args(argv)
    record = measure(args.weights.resolve(), args.phantoms)
    print(table(record))
    if args.results is not None:
        append(record, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
