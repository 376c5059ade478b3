"""A candidate default model against the shipped one, by the shipping rule of ``model_weights/MODEL_CARD.md``.

Run from the repository root once ``sh model_weights/recipe/train.sh WORK`` has finished::

    .venv/bin/python -m experiments.default_model --candidate WORK/weights --medium WORK/data --work runs/ship

Held-out phantoms only: the real scans decide nothing. Once the decision is written to the
results file, both models are measured on the real scans whatever it says (:mod:`experiments.real_ct`;
appended to ``experiments/results/real_ct.jsonl``, so that the figures outlive the work folder;
``--no-real-ct`` skips it, and it is skipped where the real scans are not on disk).

Two sets, every case predicted by both models with ``sh predict.sh`` (the user's path: clean-up,
restore onto the input's grid), the shipped model first, then the candidate, in the same run, and
scored by :func:`segcore.evaluate.evaluate_folders` (FLARE22: DSC per organ, a case's mean over
the 13 organs, an organ absent from both maps 1):

* **medium**: the realistic held-out phantoms ``train.sh`` writes and scores
  (``WORK/data/val_images``, ``val_mask``: 10 medium phantoms of seed 2022 no training step saw);
* **varied**: 10 medium phantoms drawn like the training cases (``python -m segcore.phantom
  --labeled 10 --val 0 --size medium --seed 2024 --randomise-domains --vary-anatomy
  --detailed-anatomy``, its ``train_images`` / ``train_mask``), written under ``--work``; the
  candidate also with ``--body-region``.

Rule (:func:`ships`): candidate ≥ shipped − 0.01 on *medium*, no organ of *medium* more than 0.05
below the shipped model's (its mean DSC over the cases), and candidate > shipped on *varied* (mean
DSC over cases). Also printed: per organ, candidate − shipped per case with a bootstrap 95 %
interval, and the seconds ``predict.sh`` took per set. Every run appends its figures to
``experiments/results/default_model.jsonl``; ``--report`` prints the last one again. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from experiments import real_ct

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "experiments" / "results" / "default_model.jsonl"
REAL_RESULTS = REPO_ROOT / "experiments" / "results" / "real_ct.jsonl"
MEDIUM_MARGIN = 0.01
"""How far below the shipped model the candidate may be on the realistic medium set."""
ORGAN_MARGIN = 0.05
"""How far below the shipped model any one organ of the medium set may be (its mean DSC over the cases)."""
VARIED = {"labeled": 10, "unlabeled": 0, "val": 0, "size": "medium", "seed": 2024, "randomise": True, "vary": True,
          "detailed": True}  # fmt: skip
"""The varied set (the model card's ``python -m segcore.phantom`` options, as :func:`write_dataset` arguments)."""


def ships(
    medium: dict[str, float], varied: dict[str, float], medium_organs: dict[str, list[float]] | None = None
) -> tuple[bool, str]:
    """The shipping rule on mean DSC ``{"shipped": ..., "candidate": ...}`` of the two sets and, when
    given, on the medium set's 13 per-organ means: whether it holds, and a sentence saying why."""
    from segcore.labels import ORGANS

    lost = []
    if medium_organs is not None:
        pairs = zip(medium_organs["shipped"], medium_organs["candidate"])
        lost = [f"{ORGANS[i + 1]} {new:.4f} < {old - ORGAN_MARGIN:.4f}" for i, (old, new) in enumerate(pairs)
                if new < old - ORGAN_MARGIN - 1e-9]  # fmt: skip
    floor = medium["shipped"] - MEDIUM_MARGIN
    medium_ok = medium["candidate"] >= floor - 1e-9  # exactly 0.01 below is allowed, whatever the rounding
    varied_ok = varied["candidate"] > varied["shipped"]
    why = (
        f"medium {medium['candidate']:.4f} {'>=' if medium_ok else '<'} {floor:.4f} (shipped "
        f"{medium['shipped']:.4f} - {MEDIUM_MARGIN}); varied {varied['candidate']:.4f} "
        f"{'>' if varied_ok else '<='} shipped {varied['shipped']:.4f}"
    )
    if medium_organs is not None:
        why += f"; medium organs more than {ORGAN_MARGIN} below shipped: {', '.join(lost) or 'none'}"
    return medium_ok and varied_ok and not lost, why


def predict(images: Path, out: Path, weights: Path, body_region: bool = False) -> float:
    """``sh predict.sh`` over a folder; its wall seconds."""
    command = ["sh", "predict.sh", "-i", str(images), "-o", str(out), "--weights", str(weights), "--overwrite",
               "--no-progress", *(["--body-region"] if body_region else [])]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}:\n{tail}")
    return time.perf_counter() - started


def case_dsc(predictions: Path, truth: Path) -> dict[str, list[float]]:
    """``{case: [DSC of organs 1..13]}`` (unrounded: the rule compares means)."""
    from segcore.evaluate import evaluate_folders

    evaluation = evaluate_folders(predictions, truth, progress=False)
    return {case.case: [case.organs[organ].dsc for organ in sorted(case.organs)] for case in evaluation.cases}


def varied_set(work: Path) -> Path:
    """The varied set's folder (written once; its manifest is written last, so a set cut short is written again)."""
    from segcore.phantom import write_dataset
    from segcore.phantom.dataset import MANIFEST

    folder = work / "varied"
    if not (folder / MANIFEST).exists():
        write_dataset(folder, workers=2, progress=False, **VARIED)
    return folder


def comparison(record: dict) -> str:
    """The printed comparison of a results-file record: per set, the candidate's mean DSC against
    the shipped model's (the rule's unrounded means) with a bootstrap 95 % interval of the per-case
    difference (the recorded 4-decimal figures), per organ, the seconds each model's ``predict.sh``
    took, and the verdict."""
    from experiments.ssl_gain import bootstrap_interval
    from segcore.labels import ORGANS

    rng = np.random.default_rng(0)
    lines = []
    for name, by in record["figures"].items():
        cases = list(by["shipped"]["cases"])
        shipped = np.array([by["shipped"]["cases"][case] for case in cases])
        means = record["means"][name]
        for model in [m for m in by if m != "shipped"]:
            candidate = np.array([by[model]["cases"][case] for case in cases])
            low, high = bootstrap_interval((candidate - shipped).mean(1), rng)
            lines.append(f"{name}: {model} {means[model]:.4f} vs shipped {means['shipped']:.4f}: "
                         f"{means[model] - means['shipped']:+.4f} [{low:+.4f}, {high:+.4f}]; predict.sh "
                         f"{by[model]['seconds']} s vs {by['shipped']['seconds']} s")  # fmt: skip
            per_organ = (candidate - shipped).mean(0)
            lines.append("  per organ: " + ", ".join(f"{ORGANS[i + 1]} {d:+.4f}" for i, d in enumerate(per_organ)))
    lines.append(f"SHIPS: {'yes' if record['ships'] else 'no'}: {record['why']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="experiments.default_model", description=__doc__.split("\n")[0])
    parser.add_argument("--candidate", type=Path, help="folder with the candidate coarse.pt, fine.pt")
    parser.add_argument("--shipped", type=Path, default=REPO_ROOT / "model_weights")
    parser.add_argument("--medium", type=Path, help="train.sh's data folder (val_images, val_mask)")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "default_model_check")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--report", action="store_true", help="only print the last record of the results file")
    parser.add_argument("--no-real-ct", action="store_true", help="do not measure the real scans after the decision")
    parser.add_argument("--real-results", type=Path, default=REAL_RESULTS, help="where the real scans' figures go")
    args = parser.parse_args(argv)
    if args.report:
        lines = args.results.read_text().splitlines() if args.results.exists() else []
        if not lines:
            parser.error(f"{args.results}: no record to report")
        print(comparison(json.loads(lines[-1])))
        return 0
    if args.candidate is None or args.medium is None:
        parser.error("--candidate and --medium are required (or --report)")
    work = args.work.resolve()
    args.candidate, args.shipped, args.medium = args.candidate.resolve(), args.shipped.resolve(), args.medium.resolve()
    args.results = args.results.resolve()
    varied = varied_set(work)
    sets = {"medium": (args.medium / "val_images", args.medium / "val_mask"),
            "varied": (varied / "train_images", varied / "train_mask")}  # fmt: skip
    runs = [("medium", "shipped", args.shipped, False), ("medium", "candidate", args.candidate, False),
            ("varied", "shipped", args.shipped, False), ("varied", "candidate", args.candidate, False),
            ("varied", "candidate+body_region", args.candidate, True)]  # fmt: skip
    figures: dict[str, dict] = {}
    for name, model, weights, body_region in runs:
        images, truth = sets[name]
        out = work / "predictions" / name / model
        seconds = predict(images, out, weights, body_region)
        figures.setdefault(name, {})[model] = {"seconds": round(seconds, 1), "cases": case_dsc(out, truth)}
        print(f"default_model: {name} {model}: {seconds:.1f} s", flush=True)

    means = {name: {model: float(np.mean([np.mean(v) for v in f["cases"].values()])) for model, f in by.items()}
             for name, by in figures.items()}  # fmt: skip
    organ_means = {
        model: np.mean(list(run["cases"].values()), axis=0).tolist() for model, run in figures["medium"].items()
    }
    verdict, why = ships(means["medium"], means["varied"], organ_means)
    for by in figures.values():  # 4 decimals in the record
        for run in by.values():
            run["cases"] = {case: [round(v, 4) for v in values] for case, values in run["cases"].items()}
    record = {"candidate": str(args.candidate), "shipped": str(args.shipped), "means": means, "ships": verdict,
              "why": why, "load": list(os.getloadavg()), "figures": figures}  # fmt: skip
    print(comparison(record))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as stream:
        stream.write(json.dumps(record) + "\n")
    if not args.no_real_ct and real_ct.REAL.exists():
        print("default_model: decision recorded; the real scans now (measured, they decide nothing)", flush=True)
        for model, weights in (("shipped", args.shipped), ("candidate", args.candidate)):
            measured = {**real_ct.measure(weights, phantoms=0), "model": model, "ships": verdict}
            real_ct.append(measured, args.real_results.resolve())
            print(real_ct.table(measured), real_ct.confusion_table(measured), sep="\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
