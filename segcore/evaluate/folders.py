"""Score a folder of predicted label maps against ground truth by the FLARE22 protocol.

Usage::

    python -m segcore.evaluate --pred PRED_DIR --gt GT_DIR [--csv scores.csv]

Cases pair by id: ``<id>.nii.gz`` (or ``.nii``) in both folders; a trailing ``_0000``
(the FLARE image-channel suffix) is dropped from either name, so ``<id>_0000.nii.gz``
pairs with ``<id>.nii.gz``. The ground-truth folder defines the cases. A case without a
prediction is scored as an empty prediction (DSC and NSD 0 for every organ the ground
truth holds, 1 for the organs it lacks) and listed in the summary; predictions without
ground truth are listed and ignored. Spacing comes from the ground-truth file. Per-organ
metrics are those of :func:`segcore.evaluate.metrics.score_case`, which follows the official FLARE22
script (``FLARE22/Evaluation/FLARE22_DSC_NSD_Eval.py`` in JunMa11/FLARE). Where this differs
from it: means are taken over unrounded per-case values (the script averages values rounded to
4 decimals, which can move a mean by up to 5e-5; the CSV shows 4 decimals); a z-range organ
(aorta, IVC, esophagus) that the ground truth holds on one slice is scored on that slice (the
script fails there); ``--nsd-min-dsc DSC`` sets NSD to 0 below a DSC (not in the script, off by
default; FLARE23's script uses 0.1).

Other code calls :func:`evaluate_folders` and uses the :class:`Evaluation` it returns.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segcore.evaluate.metrics import TOLERANCE_MM, OrganScore, score_case
from segcore.labels import ORGANS
from segcore.volumes import VolumeError, case_id, grid_difference, is_nifti, read_label_map


@dataclass(frozen=True)
class CaseScores:
    """Scores of one case.

    Attributes:
        case: the case id.
        organs: organ id (1..13) -> :class:`OrganScore`.
        prediction_missing: no prediction file was found; scored as an empty mask.
    """

    case: str
    organs: dict[int, OrganScore]
    prediction_missing: bool = False

    @property
    def mean_dsc(self) -> float:
        """DSC averaged over the 13 organs."""
        return float(np.mean([score.dsc for score in self.organs.values()]))

    @property
    def mean_nsd(self) -> float:
        """NSD averaged over the 13 organs."""
        return float(np.mean([score.nsd for score in self.organs.values()]))


@dataclass(frozen=True)
class Evaluation:
    """Scores of a folder of predictions.

    Attributes:
        cases: per-case scores, sorted by case id.
        missing_predictions: ids of ground-truth cases without a prediction (scored as empty).
        unmatched_predictions: ids of predictions without ground truth (not scored).
    """

    cases: list[CaseScores]
    missing_predictions: list[str]
    unmatched_predictions: list[str]

    def organ_means(self) -> dict[int, OrganScore]:
        """Organ id -> DSC and NSD averaged over the cases."""
        return {
            organ: OrganScore(
                dsc=float(np.mean([case.organs[organ].dsc for case in self.cases])),
                nsd=float(np.mean([case.organs[organ].nsd for case in self.cases])),
            )
            for organ in ORGANS
        }

    @property
    def mean_dsc(self) -> float:
        """DSC averaged over organs and cases."""
        return float(np.mean([score.dsc for score in self.organ_means().values()]))

    @property
    def mean_nsd(self) -> float:
        """NSD averaged over organs and cases."""
        return float(np.mean([score.nsd for score in self.organ_means().values()]))

    def table(self) -> str:
        """The per-organ means and the overall mean as a fixed-width text table."""
        lines = [f"{'organ':<22}{'tol mm':>7}{'DSC':>9}{'NSD':>9}"]
        for organ, score in self.organ_means().items():
            lines.append(f"{ORGANS[organ]:<22}{TOLERANCE_MM[organ]:>7g}{score.dsc:>9.4f}{score.nsd:>9.4f}")
        lines.append(f"{'mean':<22}{'':>7}{self.mean_dsc:>9.4f}{self.mean_nsd:>9.4f}")
        return "\n".join(lines)

    def write_csv(self, path: str | os.PathLike) -> None:
        """Write one row per case plus a ``mean`` row; values rounded to 4 decimals.

        Columns: ``case``, then ``<organ>_DSC`` and ``<organ>_NSD`` for each organ in id
        order, then ``mean_DSC`` and ``mean_NSD`` (over the organs of that row).
        """
        columns = ["case"]
        for name in ORGANS.values():
            columns += [f"{name}_DSC", f"{name}_NSD"]
        columns += ["mean_DSC", "mean_NSD"]
        rows = [_csv_row(case.case, case.organs, case.mean_dsc, case.mean_nsd) for case in self.cases]
        rows.append(_csv_row("mean", self.organ_means(), self.mean_dsc, self.mean_nsd))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(columns)
            writer.writerows(rows)


def _csv_row(case: str, organs: dict[int, OrganScore], mean_dsc: float, mean_nsd: float) -> list[str]:
    row = [case]
    for organ in ORGANS:
        row += [f"{organs[organ].dsc:.4f}", f"{organs[organ].nsd:.4f}"]
    return row + [f"{mean_dsc:.4f}", f"{mean_nsd:.4f}"]


def label_files(folder: str | os.PathLike) -> dict[str, Path]:
    """Case id -> NIfTI file for every ``.nii``/``.nii.gz`` file in ``folder`` (not recursive).

    Raises:
        VolumeError: the folder does not exist, or two files map to the same case id.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeError(folder, "no such folder")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not (path.is_file() and is_nifti(path)):
            continue
        case = case_id(path)
        if case in files:
            raise VolumeError(path, f"same case id {case!r} as {files[case].name}")
        files[case] = path
    return files


def score_files(pred_path: Path | None, gt_path: Path, nsd_min_dsc: float = 0.0) -> dict[int, OrganScore]:
    """Score one prediction file against its ground truth (``None``: an empty prediction).

    Raises:
        VolumeError: unreadable files, bad labels, or a prediction on another grid than the
            ground truth (the message names the prediction file and the difference).
    """
    gt, gt_geometry = read_label_map(gt_path)
    if pred_path is None:
        pred = np.zeros_like(gt)
    else:
        pred, pred_geometry = read_label_map(pred_path)
        if not pred_geometry.same_grid(gt_geometry):
            difference = grid_difference(pred_geometry, gt_geometry)
            raise VolumeError(pred_path, f"grid differs from the ground truth {gt_path}: {difference}")
    return score_case(gt, pred, gt_geometry.spacing_zyx, nsd_min_dsc)


def evaluate_folders(
    pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, *, progress: bool = True, nsd_min_dsc: float = 0.0
) -> Evaluation:
    """Score every ground-truth case of ``gt_dir`` against its prediction in ``pred_dir``.

    Args:
        pred_dir: folder of predicted label maps.
        gt_dir: folder of ground-truth label maps; defines the cases.
        progress: show a progress bar over the cases.
        nsd_min_dsc: NSD is 0 where DSC is below this (0, the official script: never).

    Returns:
        The :class:`Evaluation`.

    Raises:
        VolumeError: no ground truth in ``gt_dir``, unreadable files, or a pair on different grids.
    """
    gt_files = label_files(gt_dir)
    pred_files = label_files(pred_dir)
    if not gt_files:
        raise VolumeError(gt_dir, "no .nii/.nii.gz ground-truth files")
    cases = []
    for case in tqdm(gt_files, desc="evaluating", unit="case", disable=not progress or len(gt_files) < 2):
        pred_path = pred_files.get(case)
        organs = score_files(pred_path, gt_files[case], nsd_min_dsc)
        cases.append(CaseScores(case=case, organs=organs, prediction_missing=pred_path is None))
    return Evaluation(
        cases=cases,
        missing_predictions=[case.case for case in cases if case.prediction_missing],
        unmatched_predictions=sorted(set(pred_files) - set(gt_files)),
    )


def summary(evaluation: Evaluation) -> str:
    """The text printed at the end of a run: the per-organ table and any missing or unmatched files."""
    lines = [f"{len(evaluation.cases)} cases", evaluation.table()]
    if evaluation.missing_predictions:
        lines.append(
            f"{len(evaluation.missing_predictions)} case(s) without prediction, scored as empty masks "
            f"(0 for every organ in the ground truth): {', '.join(evaluation.missing_predictions)}"
        )
    if evaluation.unmatched_predictions:
        lines.append(
            f"{len(evaluation.unmatched_predictions)} prediction(s) without ground truth, ignored: "
            f"{', '.join(evaluation.unmatched_predictions)}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m segcore.evaluate", description="FLARE22 DSC and NSD of predicted label maps."
    )
    parser.add_argument("--pred", required=True, help="folder of predicted label maps (<id>.nii.gz)")
    parser.add_argument("--gt", required=True, help="folder of ground-truth label maps (<id>.nii.gz)")
    parser.add_argument("--csv", help="write per-case scores and their mean to this CSV file")
    parser.add_argument(
        "--nsd-min-dsc", type=float, default=0.0, metavar="DSC",
        help="NSD is 0 where DSC is below this (default 0 as the FLARE22 script; FLARE23 uses 0.1)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        evaluation = evaluate_folders(args.pred, args.gt, nsd_min_dsc=args.nsd_min_dsc)
    except VolumeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary(evaluation))
    if args.csv:
        evaluation.write_csv(args.csv)
        print(f"per-case scores written to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
