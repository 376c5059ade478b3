"""Validation accuracy against wall-clock minutes: how fast does a training recipe learn?

Run from the repository root (resumable: rerun the same command after an interruption; results
are appended as they come)::

    .venv/bin/python -m experiments.time_to_accuracy --work runs/time_to_accuracy   # every recipe, seed 0
    .venv/bin/python -m experiments.time_to_accuracy --work runs/time_to_accuracy --seeds 0 1 2 --recipes old full_res
    .venv/bin/python -m experiments.time_to_accuracy --work runs/time_to_accuracy --report         # curves, plot, table
    .venv/bin/python -m experiments.time_to_accuracy --quick                                        # smoke run, ~2 min
    .venv/bin/python -m experiments.time_to_accuracy --work runs/tta --setting default_fine --recipes old full_res

``--setting default_coarse`` / ``default_fine`` run one stage of the default model's recipe
instead (``model_weights/recipe/``: its 200 randomised, varied, detailed medium phantoms, its
store, nets, optimiser and augmentation; fold 0 of 5, 40 phantoms, validates; no test scoring here: the
recipe's ``train.sh`` scores the held-out phantoms). Their step times are in
``DEFAULT_SECONDS_PER_STEP`` (the fine stage's measured, the coarse stage's estimated).
Everything below describes the ``ssl`` setting.

Setting (the SSL benchmark's, :mod:`experiments.ssl_gain`, its ``upper_bound`` arm): phantoms of size
``small``, data seed 0, 56 labeled cases (8 in one domain and 48 in random domains), the coarse
stage at 48³ trained by the real command (``sh coarse_seg/run.sh --nproc 1`` with
``coarse_seg/config.tiny.yaml``: its network widths, augmentation and AdamW), one thread per
process, ``--parallel`` (2) processes at a time. Fold 0 of 4 of the labeled cases (14 phantoms,
never test cases) is the **validation set** every curve is measured on: mean DSC over the 13
organs (FLARE22 protocol: an organ absent from both maps is left out of the case's mean) of the
single net at the stored 48³ grid, every ``--validations``-th of the run. The 48 test phantoms
(12 in-domain, 36 shifted) score the run's ``last.pt`` at the end, on their original grids
(:func:`experiments.ssl_gain.score_checkpoint`).

The x axis is the trainer's ``train_seconds``: wall time spent in training steps (data,
augmentation, passes, updates), validation and checkpoints excluded (their frequency is the
benchmark's choice, not the recipe's). Each point carries the load average at that moment.

Recipes (``RECIPES``; every one for the same wall-clock budget ``--minutes``, turned into a step
count with the recipe's step time measured on this 2-core machine, ``SECONDS_PER_STEP``):

- ``old``: the landed recipe: half-resolution output (``output_stride=2``), poly decay over the
  run, AdamW 3e-3;
- ``full_res``: full-resolution output (``output_stride=1``, 8 full-resolution channels),
  warm-up-stable-decay schedule (cool-down over the last 20 %), AdamW 3e-3;
- ``full_res_ds``: ``full_res`` with deep supervision;
- ``full_res_4ch``: ``full_res`` with 4 full-resolution channels (the cost/accuracy trade);
- ``full_res_depth4``: ``full_res`` with one more level (depth 4, up to 64 channels: the default
  model's widths), added when ``full_res`` plateaued near 0.73 at constant learning rate
  (its step time is an estimate, not a measurement);
- ``full_res_ds_1e-2``: ``full_res_ds`` at the calibrated peak rate, AdamW 1e-2 (below).

Calibration (``CALIBRATION``, ``--recipes ds_adamw_1e-3 ...``): ``full_res_ds`` with AdamW at
1e-3 / 1e-2 / 3e-2 and SGD (Nesterov, momentum 0.99) at 3e-3 / 1e-2 / 3e-2, beside ``full_res_ds``
itself (AdamW 3e-3), all for the same short budget; judged by the final validation DSC, never
on test cases (their runs skip the test scoring).

Headline figures per recipe (median over seeds): minutes to 0.80 validation DSC (the first
validation at or above it), validation DSC at 10 / 30 / 60 minutes (the last validation at or
before that time; blank past the run), and the ``last.pt`` test DSC (in-domain / shifted).
Written to ``WORK/report.txt``, ``WORK/report.json`` and the plot ``WORK/curves.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.ssl_gain import (
    IN_DOMAIN,
    TRAIN_CONFIG,
    Settings,
    bootstrap_interval,
    finished_jobs,
    link_upper_bound_root,
    prepare_store,
    score_checkpoint,
    steps_per_epoch,
    train_arm,
    write_data,
)

NO_DS = "network.init_args.deep_supervision=false"
FULL_RES = ["network.init_args.output_stride=1", "optimizer.schedule=wsd", "optimizer.decay_share=0.2", NO_DS]
RECIPES: dict[str, list[str]] = {
    "old": ["network.init_args.output_stride=2", "optimizer.schedule=poly", NO_DS],
    "full_res": FULL_RES,
    "full_res_ds": [*FULL_RES[:-1], "network.init_args.deep_supervision=true"],
    "full_res_4ch": [*FULL_RES, "network.init_args.full_resolution_channels=4"],
    "full_res_depth4": [*FULL_RES, "network.init_args.depth=4", "network.init_args.max_channels=64"],
}
DS = RECIPES["full_res_ds"]
CALIBRATION: dict[str, list[str]] = {
    "ds_adamw_1e-3": [*DS, "optimizer.lr=0.001"],
    "ds_adamw_1e-2": [*DS, "optimizer.lr=0.01"],
    "ds_adamw_3e-2": [*DS, "optimizer.lr=0.03"],
    "ds_sgd_3e-3": [*DS, "optimizer.name=sgd", "optimizer.lr=0.003"],
    "ds_sgd_1e-2": [*DS, "optimizer.name=sgd", "optimizer.lr=0.01"],
    "ds_sgd_3e-2": [*DS, "optimizer.name=sgd", "optimizer.lr=0.03"],
}
"""The optimiser and peak-rate grid around ``full_res_ds`` (AdamW 3e-3): AdamW against SGD with
Nesterov momentum 0.99 (nnU-Net's), each at three or four peak rates (AdamW 3e-2 was added when
1e-2 came out best, at the grid's edge), same schedule and budget. Chosen on
the validation phantoms only: their runs skip the test cases."""
RECIPES.update(CALIBRATION)
RECIPES["full_res_ds_1e-2"] = CALIBRATION["ds_adamw_1e-2"]
"""The calibrated recipe: the grid's best AdamW rate (1e-2, level with 3e-2 and 0.07 over 3e-3)."""
SECONDS_PER_STEP = {"old": 0.25, "full_res": 0.53, "full_res_ds": 0.54, "full_res_4ch": 0.44, "full_res_depth4": 0.62}
SECONDS_PER_STEP.update(dict.fromkeys([*CALIBRATION, "full_res_ds_1e-2"], SECONDS_PER_STEP["full_res_ds"]))
"""One training step (batch 2, 48³, one thread), measured over one epoch of each recipe on the
2-core machine this benchmark was written on; sets each recipe's step count for the budget."""
REPO_ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 0.80
CHECKPOINT_MINUTES = (10, 30, 60)
QUICK = {"minutes": 0.4, "validations": 2, "seeds": [0]}


def curve(run_dir: Path) -> list[dict[str, Any]]:
    """The validations of a run so far: ``{"minutes", "step", "dice", "organs", "load"}`` each."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    points = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        points.append({
            "minutes": record["train_seconds"] / 60, "step": record["step"], "dice": record["net0"]["mean_dice"],
            "organs": record["net0"]["dice"], "load": record.get("load_average"),
        })  # fmt: skip
    return points


def minutes_to(points: list[dict[str, Any]], threshold: float) -> float | None:
    """Training minutes of the first validation at or above ``threshold``, or None."""
    return next((p["minutes"] for p in points if p["dice"] >= threshold), None)


def dice_at(points: list[dict[str, Any]], minutes: float) -> float | None:
    """Validation DSC of the last validation at or before ``minutes``; None past the run's end."""
    if not points or points[-1]["minutes"] < minutes * 0.98:
        return None
    before = [p for p in points if p["minutes"] <= minutes]
    return before[-1]["dice"] if before else None


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) one (recipe, seed) and score its ``last.pt`` on the test cases."""
    torch.set_num_threads(job["threads"])
    run_dir = Path(job["run_dir"])
    wall = train_arm(job["command"], run_dir, job["threads"])
    scores = {"cases": None}
    if job["store"] is not None and job["recipe"] not in CALIBRATION:
        # the SSL setting's test phantoms (the default model's are scored by train.sh; the
        # calibration grid is judged on validation only)
        scores = score_checkpoint(run_dir / "last.pt", Path(job["store"]), Path(job["data_root"]))
    return {
        "setting": job["setting"], "recipe": job["recipe"], "seed": job["seed"], "steps": job["steps"],
        "minutes": job["minutes"], "train_call_s": round(wall, 1), "command": " ".join(job["command"]),
        "test": scores["cases"],
    }  # fmt: skip


def report(
    out: Path, title: str, results: list[dict], runs: dict[tuple[str, int], Path], subsets: dict[str, list[str]]
) -> str:
    """Table, JSON figures and plot (``out/report.txt``, ``report.json``, ``curves.png``) of every
    run's curve, finished or not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        f"time_to_accuracy: {title}; one thread per process; validation mean DSC vs training minutes; "
        f"test {', '.join(f'{k} {len(v)}' for k, v in subsets.items()) or 'none'}",
        f"{'recipe':<14}{'seed':>5}{'steps':>7}{'done':>7}{'min':>7}{'to 0.80':>9}"
        + "".join(f"{f'@{m}min':>9}" for m in CHECKPOINT_MINUTES)
        + f"{'final val':>10}{'test in/shift':>16}{'load':>12}",
    ]
    figures: dict[str, Any] = {"runs": []}
    finished = {(r["recipe"], r["seed"]): r for r in results}
    figure, axis = plt.subplots(figsize=(8, 5))
    colours = dict(zip(RECIPES, plt.get_cmap("tab20").colors))
    for (recipe, seed), run_dir in sorted(runs.items()):
        points = curve(run_dir)
        if not points:
            continue
        done = finished.get((recipe, seed))
        tested = done is not None and done["test"] is not None
        test = "" if not tested else "/".join(
            f"{np.mean([np.mean(done['test'][c]['dsc']) for c in subsets[name]]):.4f}" for name in subsets
        )  # fmt: skip
        reached = minutes_to(points, THRESHOLD)
        at = [dice_at(points, m) for m in CHECKPOINT_MINUTES]
        loads = [p["load"][0] for p in points if p["load"]]
        lines.append(
            f"{recipe:<14}{seed:>5}{points[-1]['step']:>7}{'yes' if done else 'no':>7}{points[-1]['minutes']:>7.1f}"
            f"{'-' if reached is None else f'{reached:.1f}':>9}"
            + "".join(f"{'-' if v is None else f'{v:.4f}':>9}" for v in at)
            + f"{points[-1]['dice']:>10.4f}{test:>16}{f'{min(loads):.2f}-{max(loads):.2f}' if loads else '':>12}"
        )
        figures["runs"].append({
            "recipe": recipe, "seed": seed, "finished": done is not None, "minutes_to_threshold": reached,
            "dice_at_minutes": dict(zip(CHECKPOINT_MINUTES, at)), "curve": points,
            "test_mean_dsc": None if not tested else {
                name: float(np.mean([np.mean(done["test"][c]["dsc"]) for c in ids])) for name, ids in subsets.items()
            },
        })  # fmt: skip
        axis.plot(
            [p["minutes"] for p in points], [p["dice"] for p in points], color=colours.get(recipe),
            alpha=0.9, label=f"{recipe} s{seed}",
        )  # fmt: skip
    axis.axhline(THRESHOLD, color="black", linestyle=":", linewidth=1)
    axis.set_xlabel("training wall time, minutes (1 thread; validation excluded)")
    axis.set_ylabel("validation mean DSC")
    axis.set_title(title, fontsize=9)
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "curves.png", dpi=110)
    plt.close(figure)
    lines += comparisons(results, subsets, figures)
    text = "\n".join(lines)
    (out / "report.txt").write_text(text + "\n")
    (out / "report.json").write_text(json.dumps(figures, indent=1))
    return text


def comparisons(results: list[dict], subsets: dict[str, list[str]], figures: dict) -> list[str]:
    """Each recipe against ``old`` on the test cases, over the seeds both finished: the mean of
    the per-case differences (each case's DSC averaged over those seeds first) with a bootstrap
    95 % interval over the cases; also into ``figures["against_old"]``."""
    tested = [r for r in results if r["test"] is not None]
    lines, figures["against_old"] = [], {}
    old = {r["seed"]: r for r in tested if r["recipe"] == "old"}
    for recipe in sorted({r["recipe"] for r in tested} - {"old"}):
        mine = {r["seed"]: r for r in tested if r["recipe"] == recipe}
        seeds = sorted(set(old) & set(mine))
        if not seeds:
            continue
        lines.append(f"\n{recipe} - old, test mean DSC, seeds {seeds} (per-case mean over seeds, 95 % bootstrap CI):")
        for name, ids in subsets.items():
            per_case = np.array([
                np.mean([np.mean(mine[s]["test"][c]["dsc"]) - np.mean(old[s]["test"][c]["dsc"]) for s in seeds])
                for c in ids
            ])  # fmt: skip
            low, high = bootstrap_interval(per_case, np.random.default_rng(0))
            lines.append(f"  {name:<10} {per_case.mean():+.4f} [{low:+.4f}, {high:+.4f}] over {len(ids)} cases")
            figures["against_old"].setdefault(recipe, {})[name] = [float(per_case.mean()), low, high]
    return lines


SETTINGS = {
    "ssl": {"config": TRAIN_CONFIG, "stage": "coarse", "size": 48},
    "default_coarse": {"config": "model_weights/recipe/coarse.yaml", "stage": "coarse", "size": 48},
    "default_fine": {"config": "model_weights/recipe/fine.yaml", "stage": "fine", "size": 80},
}
"""Where the runs happen: the SSL benchmark's setting (every phantom labeled), or one stage of
the default model's recipe (its store, network widths, optimiser and augmentation)."""
TITLES = {
    "ssl": "coarse stage 48^3, 56 labeled phantoms (14 validate)",
    "default_coarse": "default model's coarse stage 48^3, 200 medium phantoms (40 validate)",
    "default_fine": "default model's fine stage 80^3, 200 medium phantoms (40 validate)",
}
DEFAULT_SECONDS_PER_STEP = {
    "default_coarse": {"old": 0.2, "full_res": 0.4, "full_res_ds": 0.4},
    "default_fine": {"old": 1.16, "full_res": 1.7, "full_res_ds": 1.75},
}
"""``default_fine`` ``old`` and ``full_res_ds``: measured (two processes side by side, 480 and
240 steps); the rest are estimates: the model card's step rate of the shipped (old) coarse run,
2.0× for the full-resolution stage as at the SSL setting, and deep supervision's 4 %."""


def ssl_data(work: Path, settings: Settings) -> tuple[Path, Path | None, dict[str, list[str]]]:
    """The SSL benchmark's phantoms: ``(training store, test store, test subsets)``."""
    from segcore.phantom.tissues import domain_group
    from segcore.store import CaseStore

    data_root, upper_root = work / "data", work / "data_all_labeled"
    store, upper_store = work / "store_48.lmdb", work / "store_48_all_labeled.lmdb"
    manifest = work / "cases.json"
    if not manifest.exists():
        manifest.write_text(json.dumps(write_data(data_root, settings), indent=1))
    prepare_store(data_root, store, settings)
    link_upper_bound_root(data_root, upper_root)
    prepare_store(upper_root, upper_store, settings)
    groups = {r["id"]: domain_group(r["domain"]) for r in json.loads(manifest.read_text())}
    reader = CaseStore(store)
    test_ids = reader.ids("test")
    reader.close()
    subsets = {
        "in-domain": [c for c in test_ids if groups[c] == IN_DOMAIN],
        "shifted": [c for c in test_ids if groups[c] != IN_DOMAIN],
    }
    return upper_store, store, subsets


def default_model_data(work: Path, quick: bool) -> Path:
    """The default model's store as ``model_weights/recipe/train.sh`` makes it (200 randomised,
    varied medium phantoms with the detailed anatomy, seed 2022; fold 0 of 5 validates)."""
    from data_prepare.prepare import PrepareConfig, run
    from segcore.config import load_config
    from segcore.phantom import write_dataset

    data_root, store = work / "default_data", work / "default_store.lmdb"
    if not (data_root / "phantom_cases.json").exists():
        labeled = 10 if quick else 200
        options = {"randomise": True, "vary": True, "detailed": True, "progress": False}
        write_dataset(data_root, labeled, 0, 0, "medium", 2022, workers=2, **options)
        (data_root / "phantom_cases.json").touch()
    values = load_config(REPO_ROOT / "model_weights/recipe/prepare.yaml")
    values.update(data_root=str(data_root), out=str(store))
    report = run(PrepareConfig(**values))
    if report.failed:
        raise RuntimeError(f"data_prepare failed on {len(report.failed)} case(s):\n{report.summary()}")
    return store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="experiments.time_to_accuracy", description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="folder for data, stores, runs and results (default: a new temp dir)")
    parser.add_argument("--setting", choices=list(SETTINGS), default="ssl")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="training budget of every run")
    parser.add_argument("--validations", type=int, default=40, help="validations per run")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only the report of what has run")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}, a few phantoms")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.quick:
        args.minutes, args.validations, args.seeds = QUICK["minutes"], QUICK["validations"], QUICK["seeds"]
        settings = Settings(labeled=6, unlabeled=4, test=4)
    work = (args.work or Path(tempfile.mkdtemp(prefix="time_to_accuracy_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"time_to_accuracy: {work}; load average {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)
    setting = SETTINGS[args.setting]
    if args.setting == "ssl":
        train_store, test_store, subsets = ssl_data(work, settings)
        seconds_per_step, runs_root = SECONDS_PER_STEP, work / "runs"
    else:
        train_store, test_store, subsets = default_model_data(work, args.quick), None, {}
        seconds_per_step, runs_root = DEFAULT_SECONDS_PER_STEP[args.setting], work / "runs" / args.setting
        args.recipes = [recipe for recipe in args.recipes if recipe in seconds_per_step]

    results_path = work / "results.jsonl"
    results = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []
    results = [r for r in results if r.get("setting", "ssl") == args.setting and r["minutes"] == args.minutes]
    spe = steps_per_epoch(train_store)
    size = setting["size"]
    jobs, runs = [], {}
    for seed in args.seeds:
        for recipe in args.recipes:
            steps = max(4, round(args.minutes * 60 / seconds_per_step[recipe]))
            run_dir = runs_root / f"{recipe}_{args.minutes:g}min" / f"seed{seed}"
            runs[(recipe, seed)] = run_dir
            if args.report or any(r["recipe"] == recipe and r["seed"] == seed for r in results):
                continue
            epochs = math.ceil(steps / spe)
            command = [
                "sh", f"{setting['stage']}_seg/run.sh", "--nproc", "1", "--device", "cpu",
                "--config", setting["config"], f"store={train_store}", f"output_dir={run_dir}",
                f"input_size=[{size},{size},{size}]", "data.workers=0", f"train.epochs={epochs}",
                f"train.max_steps={steps}", f"train.seed={seed}",
                f"train.val_every={max(1, epochs // args.validations)}", "semi.enabled=false", *RECIPES[recipe],
            ]  # fmt: skip
            jobs.append({
                "setting": args.setting, "recipe": recipe, "seed": seed, "steps": steps, "minutes": args.minutes,
                "run_dir": str(run_dir), "command": command, "threads": 1,
                "store": None if test_store is None else str(test_store), "data_root": str(work / "data"),
            })  # fmt: skip
    if jobs:
        print(f"time_to_accuracy: {len(jobs)} runs of {args.minutes:g} min, {args.parallel} at a time", flush=True)
        for job, line in finished_jobs(
            run_job, jobs, args.parallel, lambda j: f"time_to_accuracy: {j['recipe']} seed {j['seed']}"
        ):
            with results_path.open("a") as stream:
                stream.write(json.dumps(line) + "\n")
            results.append(line)
            print(f"time_to_accuracy: {job['recipe']} seed {job['seed']} done", flush=True)
    out = work if args.setting == "ssl" else runs_root
    out.mkdir(parents=True, exist_ok=True)
    print(report(out, TITLES[args.setting], results, runs, subsets))
    print(f"\ntime_to_accuracy: report in {out / 'report.txt'}, plot {out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
