"""How a model does on the real labelled CTs, next to its held-out phantom figures.

Run from the repository root::

    .venv/bin/python -m experiments.real_ct                       # the default model, 10 held-out phantoms
    .venv/bin/python -m experiments.real_ct --weights runs/my_model --phantoms 4
    .venv/bin/python -m experiments.real_ct --weights WORK/weights --results experiments/results/real_ct.jsonl
    .venv/bin/python -m experiments.real_ct --confusion --phantoms 0  # and what each organ's voxels were given

Real scans (``../shared/data/real``, measurement only: never train on them or choose anything
with them): the 3 mm abdominal CT with its labels, and the 20-slice DICOM series with its
labels, which are stored on the same physical grid with the y axis flipped and are brought onto
the series' grid by nearest-neighbour resampling (exact: the voxel centres coincide). Phantoms:
``--phantoms`` small held-out cases of the model card's second set (seed 2023). Scores follow
the FLARE22 script (:func:`segcore.evaluate.metrics.score_case`, no NSD rule): per organ DSC and NSD, the
mean over the organs the ground truth holds, and the mean over all 13 (an organ absent from both
masks counts 1, from one of them 0). The labels of the real files are another tool's output
remapped to FLARE22 ids, not manual annotation (their README). Nothing is asserted.

Each scan's record also keeps its confusion (:func:`confusion`): for every organ of the real
labels, the three labels the model gave most of its voxels, with their shares; ``--confusion``
prints them under the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from testkit import REAL_DATA as REAL

REPO_ROOT = Path(__file__).resolve().parents[1]


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


def confusion(truth: np.ndarray, prediction: np.ndarray, top: int = 3) -> dict[int, list[tuple[int, float]]]:
    """What the prediction gave each organ of the truth.

    Args:
        truth: reference label ids, any shape (0 is background).
        prediction: predicted label ids on the same grid (same shape).
        top: how many labels to keep per organ.

    Returns:
        Per organ id of ``truth`` (ascending; background and organs absent from ``truth`` left out),
        up to ``top`` ``(predicted label id, share of the organ's voxels)`` pairs, most voxels first
        (equal counts: lower id first); a label given none of its voxels is not listed.
    """
    if truth.shape != prediction.shape:
        raise ValueError(f"confusion: reference labels {truth.shape} and prediction {prediction.shape} differ in shape")
    inside = truth > 0
    organs, given = truth[inside].astype(np.int64), prediction[inside].astype(np.int64)
    if organs.size == 0:
        return {}
    classes = int(max(organs.max(), given.max())) + 1
    counts = np.bincount(organs * classes + given, minlength=classes * classes).reshape(classes, classes)
    found: dict[int, list[tuple[int, float]]] = {}
    for organ in np.flatnonzero(counts.sum(axis=1)):
        ranked = sorted(np.flatnonzero(counts[organ]), key=lambda label: (-counts[organ, label], label))[:top]
        total = counts[organ].sum()
        found[int(organ)] = [(int(label), float(counts[organ, label] / total)) for label in ranked]
    return found


def score(predictor, image_path: Path, truth: np.ndarray) -> dict:
    """Per organ DSC/NSD of the prediction on ``image_path`` against ``truth`` (on its grid), and
    its :func:`confusion`."""
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
        "confusion": confusion(truth, prediction.labels),
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
    phantoms): per organ DSC (organs the truth holds; 4 decimals), the means, the quality verdict,
    and per organ the three labels given most of its voxels as ``[name, share]`` (4 decimals)."""
    from segcore.inference.predictor import Predictor
    from segcore.labels import LABEL_NAMES, ORGANS
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
            "confusion": {
                ORGANS[organ]: [[LABEL_NAMES[label], round(share, 4)] for label, share in given]
                for organ, given in result["confusion"].items()
            },
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


def confusion_table(record: dict) -> str:
    """The printed confusion of a :func:`measure` record: per scan, one line per organ of its labels
    naming the labels the model gave most of that organ's voxels, with their shares in percent."""
    lines = []
    for name, scan in record["scans"].items():
        lines.append(f"{name}: the labels given each organ's voxels, most first")
        for organ, given in scan["confusion"].items():
            lines.append(f"  {organ}: " + ", ".join(f"{label} {share * 100:.1f} %" for label, share in given))
    return "\n".join(lines)


def append(record: dict, results: Path) -> None:
    """Append ``record`` (one JSON line) to ``results``."""
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as stream:
        stream.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="experiments.real_ct", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "model_weights")
    parser.add_argument("--phantoms", type=int, default=10, help="held-out small phantoms to score (0: none)")
    parser.add_argument("--results", type=Path, help="also append the figures to this JSON-lines file")
    parser.add_argument(
        "--confusion", action="store_true", help="also print the labels given most of each organ's voxels per real scan"
    )
    args = parser.parse_args(argv)
    record = measure(args.weights.resolve(), args.phantoms)
    print(table(record))
    if args.confusion:
        print(confusion_table(record))
    if args.results is not None:
        append(record, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
