"""What a review pays: a weak model fine-tuned on the cases a reviewer corrected, against the same
budget without them.

Run from the repository root (resumable: rerun after an interruption; every finished run is appended
to ``experiments/results/review_loop.jsonl`` with its per-case test DSC)::

    .venv/bin/python -m experiments.review_loop --work runs/review_loop
    .venv/bin/python -m experiments.review_loop --work runs/review_loop --report
    .venv/bin/python -m experiments.review_loop --quick          # every step once, minutes

Design (fixed before the first run):

* **Phantoms** of size ``small``, data seed 0, the coarse stage at 48³ (``coarse_seg/config.tiny.yaml``,
  the recipe ``full_res_ds_1e-2``, one thread per process) as in :mod:`experiments.ssl_verdict`.
* **The weak model**: a pair trained S1 = 600 steps on 4 labeled cases in one domain (portal
  venous, 10 HU), one of which validates (the same one for every run).
* **The reviewed batch**: 24 cases in another contrast phase (arterial or non-contrast,
  ``write_dataset(phases=...)``), segmented by the weak model; the reviewer corrects 8 of them
  (their true labels are the correction) and leaves 16 unreviewed. The data folder is what
  ``segcore-export-labels`` writes for such a batch: the 8 labeled, the 16 unlabeled, beside the
  original 4.
* **Held out**: 16 cases drawn as the batch (other seeds), never trained on.
* **Arms**, each S2 = 300 steps from the weak pair's ``last.pt`` (the recipe over its own steps),
  training seeds 0, 1, 2:

  - ``continue`` (the control): the original 3 training cases, labels only;
  - ``reviewed``: the 3 and the 8 corrected, labels only;
  - ``reviewed_semi``: the 3 and the 8 labeled, the 16 unlabeled by confidence-aware CPS (the
    product's semi-supervised method).

* **Score**: ``last.pt``'s mean DSC over the 13 organs per held-out case, on its original grid; an
  arm minus the control per case, averaged over the seeds, with a paired bootstrap 95 % interval
  (10,000 resamples of the cases); per organ the same. Nothing is asserted: the figures are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from experiments import ssl_gain
from experiments.ssl_verdict import (
    ARM_OVERRIDES,
    PAIR,
    SHIFTED_PHASES,
    schedule_overrides,
    set_validation,
    train_command,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "experiments" / "results" / "review_loop.jsonl"
ARMS = {
    "continue": ("control", PAIR),
    "reviewed": ("reviewed", PAIR),
    "reviewed_semi": ("reviewed", ARM_OVERRIDES["cacps"]),
}
"""arm -> (its data folder, its overrides)."""


@dataclass(frozen=True)
class Settings:
    labeled: int = 4
    batch: int = 24
    corrected: int = 8
    test: int = 16
    coarse_size: int = 48
    seed: int = 0
    s1: int = 600
    s2: int = 300
    validations: int = 6
    seeds: tuple[int, ...] = (0, 1, 2)


QUICK = {"batch": 4, "corrected": 2, "test": 2, "s1": 12, "s2": 6, "validations": 2, "seeds": (0,)}


def write_data(work: Path, settings: Settings) -> dict[str, Path]:
    """The phantoms, and the two data folders (``control``, ``reviewed``) as links into them."""
    from segcore.phantom import PhantomDomain, write_dataset
    from segcore.phantom.dataset import UNLABELED_MASK_DIR

    base = work / "phantoms"
    written = base / "complete"  # both calls done: an interrupted generation is made again, whole
    if not written.exists():
        common = {"size": "small", "seed": settings.seed, "workers": min(2, os.cpu_count() or 1), "progress": False}
        write_dataset(base, settings.labeled, 0, 0, domain=PhantomDomain(**ssl_gain.LABELED_DOMAIN), **common)
        write_dataset(base, 0, settings.batch, settings.test, phases=SHIFTED_PHASES, unlabeled_masks=True, **common)
        written.touch()
    batch = sorted(p.name.removesuffix("_0000.nii.gz") for p in (base / "trainu_images").glob("*_0000.nii.gz"))
    corrected = batch[: settings.corrected]
    roots = {"control": work / "data_control", "reviewed": work / "data_reviewed"}
    links: dict[str, list[tuple[str, str]]] = {"control": [], "reviewed": []}
    for name in ("train_images", "train_mask", "val_images", "val_mask"):
        for path in sorted((base / name).glob("*.nii.gz")):
            for root in links:
                links[root].append((f"{name}/{path.name}", str(path)))
    for case in batch:  # as segcore-export-labels writes a reviewed batch
        if case in corrected:
            links["reviewed"].append(
                (f"train_images/{case}_0000.nii.gz", str(base / "trainu_images" / f"{case}_0000.nii.gz"))
            )
            links["reviewed"].append((f"train_mask/{case}.nii.gz", str(base / UNLABELED_MASK_DIR / f"{case}.nii.gz")))
        else:
            links["reviewed"].append(
                (f"trainu_images/{case}_0000.nii.gz", str(base / "trainu_images" / f"{case}_0000.nii.gz"))
            )
    for root, pairs in links.items():
        for relative, target in pairs:
            link = roots[root] / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(target)
    return roots


def prepare(work: Path, roots: dict[str, Path], settings: Settings) -> dict[str, Path]:
    """Both stores, each validating on the same original labeled case."""
    gain = ssl_gain.Settings(coarse_size=settings.coarse_size, seed=settings.seed)
    stores = {}
    for name, root in roots.items():
        stores[name] = work / f"store_{name}.lmdb"
        ssl_gain.prepare_store(root, stores[name], gain)
        set_validation(stores[name], ["FLARE22_Tr_0001"])
    return stores


def score(run_dir: Path, store: Path, data_root: Path) -> dict:
    scores = ssl_gain.score_checkpoint(run_dir / "last.pt", store, data_root)
    return {case: [round(v, 4) for v in values["dsc"]] for case, values in scores["cases"].items()}


def read_results(path: Path, key: str) -> dict[tuple[str, int], dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {(line["arm"], line["seed"]): line for line in lines if line["settings_key"] == key}


def run(
    work: Path, settings: Settings, results_path: Path, arms: tuple[str, ...] = tuple(ARMS)
) -> dict[tuple[str, int], dict]:
    """Train the weak pair, then per seed each of ``arms`` (skipping what the results file holds)."""
    key = json.dumps(asdict(settings), sort_keys=True)
    roots = write_data(work, settings)
    stores = prepare(work, roots, settings)
    results = read_results(results_path, key)
    size = settings.coarse_size

    def train(arm: str, seed: int, store: Path, overrides: list[str], steps: int) -> None:
        if (arm, seed) in results:
            return
        run_dir = work / "runs" / f"{arm}_s{seed}"
        spe = max(1, ssl_gain.steps_per_epoch(store))
        command = train_command(store, run_dir, [*schedule_overrides(steps, settings.validations, spe, seed, size),
                                                 *overrides])  # fmt: skip
        wall = ssl_gain.train_arm(command, run_dir, 1)
        line = {"arm": arm, "seed": seed, "train_s": round(wall, 1), "settings_key": key,
                "cases": score(run_dir, stores["control"], roots["control"])}  # fmt: skip
        results_path.parent.mkdir(parents=True, exist_ok=True)
        with results_path.open("a") as stream:
            stream.write(json.dumps(line) + "\n")
        results[(arm, seed)] = line
        print(f"review_loop: {arm} seed {seed}: {np.mean(list(line['cases'].values())):.4f} ({wall:.0f} s)", flush=True)

    train("weak", 0, stores["control"], PAIR, settings.s1)
    weak = work / "runs" / "weak_s0" / "last.pt"
    for seed in settings.seeds:
        for arm in arms:
            data, overrides = ARMS[arm]
            train(arm, seed, stores[data], [*overrides, f"semi.init_from={weak}"], settings.s2)
    return results


def report(results: dict[tuple[str, int], dict], settings: Settings) -> str:
    from segcore.labels import ORGANS

    if ("weak", 0) not in results:
        return "review_loop: no results yet"
    names = list(ORGANS.values())
    cases = sorted(results[("weak", 0)]["cases"])
    dsc = {key: np.array([line["cases"][c] for c in cases]) for key, line in results.items()}
    lines = [
        f"review_loop: weak pair {settings.s1} steps on {settings.labeled} portal venous cases; "
        f"{settings.corrected} of {settings.batch} batch cases (other phases) corrected; {len(cases)} held-out "
        f"cases; fine-tunes of {settings.s2} steps",
        f"  weak model: {dsc[('weak', 0)].mean():.4f}",
    ]
    rng = np.random.default_rng(0)
    for arm in ARMS:
        seeds = sorted(seed for a, seed in results if a == arm)
        if seeds:
            means = ", ".join(f"s{s} {dsc[(arm, s)].mean():.4f}" for s in seeds)
            lines.append(f"  {arm:<14} mean {np.mean([dsc[(arm, s)].mean() for s in seeds]):.4f} ({means})")
    for arm in ("reviewed", "reviewed_semi"):
        seeds = [s for s in settings.seeds if (arm, s) in results and ("continue", s) in results]
        if not seeds:
            continue
        diff = np.mean([dsc[(arm, s)] - dsc[("continue", s)] for s in seeds], axis=0)  # (cases, organs)
        low, high = ssl_gain.bootstrap_interval(diff.mean(1), rng)
        lines.append(f"  {arm} - continue: {diff.mean():+.4f} [{low:+.4f}, {high:+.4f}] (seeds {seeds}); per organ: "
                     + ", ".join(f"{n} {v:+.3f}" for n, v in zip(names, diff.mean(0))))  # fmt: skip
    return "\n".join(lines)


def arm_list(text: str) -> list[str]:
    """``--arms``: names of :data:`ARMS`, in the order given."""
    arms = [arm for arm in text.split(",") if arm]
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown or not arms:
        raise argparse.ArgumentTypeError(f"unknown arm(s) {unknown or text!r}; known: {', '.join(ARMS)}")
    return arms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="experiments.review_loop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="data, stores and runs (default: a new temporary folder)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    parser.add_argument("--report", action="store_true", help="only the report of what has finished")
    parser.add_argument(
        "--arms", type=arm_list, default=list(ARMS), help=f"comma-separated arms to train (default: {','.join(ARMS)})"
    )
    args = parser.parse_args(argv)
    settings = Settings(**QUICK) if args.quick else Settings()
    torch.set_num_threads(1)
    work = (args.work or Path(tempfile.mkdtemp(prefix="review_loop_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.jsonl" if args.quick else RESULTS
    started = time.perf_counter()
    if args.report:
        results = read_results(results_path, json.dumps(asdict(settings), sort_keys=True))
    else:
        results = run(work, settings, results_path, args.arms)
    text = report(results, settings)
    print(text)
    (work / "report.txt").write_text(text + "\n")
    print(f"review_loop: {time.perf_counter() - started:.0f} s; {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
