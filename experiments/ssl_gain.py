"""Does semi-supervised training pay? Arms with the same labels, augmentation and step budget,
scored on held-out phantoms from many imaging domains, over several training seeds.

Run from the repository root (resumable: rerun the same command after an interruption)::

    .venv/bin/python -m experiments.ssl_gain --work runs/ssl_gain          # 3 seeds, about 25 min per seed on 2 cores
    .venv/bin/python -m experiments.ssl_gain --work runs/ssl_gain --report  # the tables from what has finished
    .venv/bin/python -m experiments.ssl_gain --quick                        # smoke run, a few minutes

Design (fixed before any method run was compared; changing it means a new benchmark):

* **Data** (phantoms of size ``small``, data seed 0): ``--labeled`` 8 cases in one domain
  (portal venous, 10 HU noise: a single-centre labeled set), of which fold 0 of 4 (2 cases)
  validates and picks ``best.pt``; ``--unlabeled`` 48 cases and ``--test`` 48 held-out cases,
  each with its own random domain from one distribution
  (:func:`segcore.phantom.tissues.sample_domain`: phase, noise 5-40 HU, HU offset, blur,
  enhancement, oral contrast), as when unlabeled scans come from the same many centres as the
  scans the model will meet. Test cases are reported in two subsets by
  :func:`segcore.phantom.tissues.domain_group`: **in-domain** (``portal_venous``: the labeled
  phase, noise ≤ 15 HU, no oral contrast) and **shifted** (every other group; about three
  quarters of them).
* **Stage and size**: the coarse stage at 48³ (``--coarse-size``), where the stored labels
  themselves score 0.93-1.00 mean DSC (the ceiling column), trained by the real command,
  ``sh coarse_seg/run.sh --nproc 1 --config coarse_seg/config.tiny.yaml ...``, one thread per
  process, two processes at a time (``--parallel``).
* **Budget**: every arm runs ``--steps`` optimisation steps (1500) of batch 2 labeled (+ 2
  unlabeled) per net, with the same network, optimiser, schedule and augmentation of the
  labeled batch (``coarse_seg/config.tiny.yaml``: spatial, per-organ contrast, HU remapping,
  gamma, blur, noise, Fourier amplitude mixing). Arms differ only in how unlabeled data is
  used. ``--train-seeds`` 0 1 2 repeat every arm with other initialisations and data orders.
* **Arms**:

  - ``supervised``: one net on the labels; Fourier amplitude sources from the labeled batch.
  - ``supervised_pair``: two nets on the labels (``semi.weight=0``), evaluated as their
    ensemble: **the control** for every semi-supervised arm (two nets and an ensemble, no
    pseudo-labels).
  - ``supervised_pair_mixall``: the same with Fourier amplitude sources from labeled and
    unlabeled volumes: separates what style mixing with unlabeled scans gives from what
    pseudo-labels give.
  - ``cps``: plain cross pseudo supervision (same augmented view for both nets), amplitude
    sources from all volumes, ramp-up over 35 % of the steps.
  - ``cps_uif``: ``cps`` for half the steps, UIF keeps the ``--uif-keep`` most certain half of
    the unlabeled cases, then the same two nets go on for the other half on that selection
    (``semi.round_init=previous``): the same 1500 steps in all.
  - ``cacps`` (**the primary arm**): confidence-aware CPS (seed 002): the teacher labels the
    weak view, the student learns on the strong view (intensity augmentation + Fourier mixing
    with amplitude sources from all volumes), pseudo-labels weighted per voxel by the
    teacher's agreement between the two views, a Dice term (weight 0.5) over the organs present
    in the pseudo-label, ramp-up over 35 % of the steps.
  - ``upper_bound``: one net trained with labels on every labeled and unlabeled case (fold 0 of
    4 of them validates): what the unlabeled cases would give if they were labeled.
  - ``cps_restart`` (added after seed 0 of the arms above had run, as a control for ``cps_uif``,
    never the primary arm): ``cps_uif`` with UIF keeping every unlabeled case, so the only
    difference from ``cps`` is the second learning-rate cycle that ``cps_uif``'s second half
    starts (warm-up and decay again), and the only difference from ``cps_uif`` is the selection.

* **Scoring**: ``last.pt`` (primary) and ``best.pt`` of every arm; a checkpoint with two nets
  predicts with their mean softmax. Each test case's stored 48³ image is windowed and z-scored,
  predicted, resized (nearest) back to the case's original grid, and scored against its
  ground-truth mask with :func:`segcore.evaluate.metrics.score_case` (FLARE22 DSC and NSD per organ, an
  organ absent from both scores 1). A case's score is its mean DSC over the 13 organs.
* **Comparison**: per test case, the difference of an arm and ``supervised_pair`` averaged over
  the seeds; the mean over cases with a bootstrap 95 % interval (10 000 resamples of the cases);
  per organ the same mean difference. The question answered: does ``cacps`` (``last.pt``) beat
  ``supervised_pair`` on the shifted subset by ≥ +0.03 with the interval above 0, with no organ
  worse by more than 0.02, and is ``cps_uif`` ≥ ``cps``? Figures are printed, never judged by a test.

Every finished (seed, arm) appends one JSON line to ``WORK/results.jsonl`` (wall time, load
average, per-case per-organ scores of both checkpoints); a rerun skips what is there, resumes an
interrupted training run from its ``last.pt``, and trains the rest. The report goes to
``WORK/report.txt`` and ``WORK/report.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = "coarse_seg/config.tiny.yaml"
PREPARE_CONFIG = "data_prepare/config.tiny.yaml"
LABELED_DOMAIN = {"phase": "portal_venous", "noise_sigma_hu": 10.0}
IN_DOMAIN = "portal_venous"
"""The test subset imaged like the labeled cases (:func:`segcore.phantom.tissues.domain_group`)."""
VALIDATION_FOLDS = 4
BATCH = 2
CONTROL, PRIMARY = "supervised_pair", "cacps"
ARMS = (
    "cps_uif", "cacps", "cps", "supervised_pair_mixall", "supervised_pair", "supervised", "upper_bound", "cps_restart",
)  # fmt: skip
"""Longest first, so that two parallel processes end together."""
REPORT_ORDER = (
    "supervised", "supervised_pair", "supervised_pair_mixall", "cps", "cps_uif", "cps_restart", "cacps", "upper_bound",
)  # fmt: skip
CEILING = "coarse_labels"
DATA_FIELDS = ("labeled", "unlabeled", "test", "seed")
BOOTSTRAP = 10_000


@dataclass
class Settings:
    """Everything that decides the data and the training runs (saved with the results)."""

    labeled: int = 8
    unlabeled: int = 48
    test: int = 48
    coarse_size: int = 48
    steps: int = 1500
    validations: int = 10
    seed: int = 0
    train_seeds: tuple[int, ...] = (0, 1, 2)
    uif_keep: float = 0.5
    threads: int = 1
    parallel: int = 2
    extra: tuple[str, ...] = field(default_factory=tuple)


QUICK = {"labeled": 6, "unlabeled": 4, "test": 4, "steps": 12, "validations": 2, "train_seeds": (0,)}
"""``--quick``: enough to run every step once."""


def arm_overrides(arm: str, settings: Settings, steps_per_epoch: int, seed: int, domains: Path) -> list[str]:
    """``key=value`` overrides of the tiny coarse config for one arm (store and output_dir apart)."""
    size = settings.coarse_size
    rounds = 2 if arm in ("cps_uif", "cps_restart") else 1
    steps = settings.steps // rounds
    epochs = math.ceil(steps / steps_per_epoch)
    common = [
        f"input_size=[{size},{size},{size}]",
        f"train.epochs={epochs}",
        f"train.max_steps={steps}",
        f"train.val_every={max(1, epochs // max(1, settings.validations // rounds))}",
        f"train.seed={seed}",
        "data.workers=0",
        "semi.rampup_share=0.35",
        # The nets and schedule the figures in the README were measured with (half-resolution
        # output, poly decay), pinned now that the tiny config defaults to full resolution.
        "network.init_args.output_stride=2",
        "network.init_args.deep_supervision=false",
        "optimizer.schedule=poly",
    ]
    if arm in ("supervised", "upper_bound"):
        return [*common, "semi.enabled=false", "augment.fourier_sources=labeled", *settings.extra]
    pair = [*common, "semi.enabled=true", "semi.method=cps", "semi.rounds=1"]  # plain CPS, named: not the default
    if arm == "supervised_pair":
        return [*pair, "semi.weight=0", "augment.fourier_sources=labeled", *settings.extra]
    if arm == "supervised_pair_mixall":
        return [*pair, "semi.weight=0", "augment.fourier_sources=all", *settings.extra]
    semi = [*common, "semi.enabled=true", "semi.method=cps", "semi.weight=1.0", "augment.fourier_sources=all"]
    if arm == "cps":
        return [*semi, "semi.rounds=1", *settings.extra]
    if arm in ("cps_uif", "cps_restart"):
        keep = settings.uif_keep if arm == "cps_uif" else settings.unlabeled  # a count: every case
        return [
            *semi, "semi.rounds=2", "semi.round_init=previous", f"semi.uif_keep={keep}",
            f"semi.uif_domains={domains}", *settings.extra,
        ]  # fmt: skip
    if arm == "cacps":
        return [
            *semi, "semi.rounds=1", "semi.weak_strong=true", "semi.fourier_confidence=true", "semi.pseudo_dice=0.5",
            *settings.extra,
        ]  # fmt: skip
    raise ValueError(f"unknown arm {arm!r}")


# -- data ------------------------------------------------------------------------------------------
def write_data(root: Path, settings: Settings) -> list[dict[str, Any]]:
    """Labeled cases in one domain; unlabeled and test cases in random domains (unlabeled masks kept
    aside in ``trainu_mask/`` for the upper bound)."""
    from segcore.phantom import write_dataset
    from segcore.phantom.tissues import PhantomDomain

    workers = min(2, os.cpu_count() or 1)
    records = write_dataset(
        root, settings.labeled, 0, 0, "small", settings.seed, workers=workers, domain=PhantomDomain(**LABELED_DOMAIN)
    )
    records += write_dataset(
        root, 0, settings.unlabeled, settings.test, "small", settings.seed, workers=workers, unlabeled_masks=True
    )
    ids = [record["id"] for record in records]
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"{root}: phantom ids collide between the two generation calls")
    return records


def link_upper_bound_root(root: Path, upper: Path) -> None:
    """A data root where the unlabeled cases are labeled too (symbolic links into ``root``)."""
    from segcore.phantom.dataset import UNLABELED_MASK_DIR

    for folder in ("train_images", "train_mask"):
        (upper / folder).mkdir(parents=True, exist_ok=True)
    pairs = [("train_images", "train_images"), ("train_mask", "train_mask"), ("trainu_images", "train_images")]
    pairs.append((UNLABELED_MASK_DIR, "train_mask"))
    for source, target in pairs:
        for path in sorted((root / source).glob("*.nii.gz")):
            link = upper / target / path.name
            if not link.exists():
                link.symlink_to(path.resolve())


def prepare_store(root: Path, store: Path, settings: Settings) -> None:
    """The LMDB store of a data root, whole scans at ``coarse_size``³ (cases already stored are kept)."""
    from data_prepare.prepare import PrepareConfig, run
    from segcore.config import load_config

    values = load_config(REPO_ROOT / PREPARE_CONFIG)
    size = settings.coarse_size
    values.update(data_root=str(root), out=str(store), coarse_size=[size] * 3, folds=VALIDATION_FOLDS)
    values.update(seed=settings.seed, workers=min(2, os.cpu_count() or 1))
    report = run(PrepareConfig(**values))
    if report.failed:
        raise RuntimeError(f"data_prepare failed on {len(report.failed)} case(s):\n{report.summary()}")


def steps_per_epoch(store_path: Path) -> int:
    """Steps of one epoch: the training fold in batches of 2, the last partial batch dropped."""
    from segcore.store import CaseStore

    store = CaseStore(store_path)
    train_ids, _ = store.fold(0)
    store.close()
    return max(1, len(train_ids) // BATCH)


# -- one arm: train, then score both checkpoints --------------------------------------------------
def resumes(run_dir: Path) -> bool:
    """Whether training into ``run_dir`` resumes from a checkpoint rather than starting afresh."""
    return (run_dir / "last.pt").exists() or (run_dir / "round0" / "last.pt").exists()


def train_arm(command: list[str], run_dir: Path, threads: int) -> float:
    """Run (or resume) one training command; returns the wall time of this call."""
    resumable = resumes(run_dir)
    if run_dir.exists() and not resumable:
        shutil.rmtree(run_dir)  # started but never checkpointed: nothing to keep
    run_dir.mkdir(parents=True, exist_ok=True)
    if resumable:
        command = [*command, "--resume"]
    started = time.perf_counter()
    with (run_dir / "train.log").open("a") as log:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join((run_dir / "train.log").read_text().splitlines()[-20:])
        raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}:\n{tail}")
    return time.perf_counter() - started


@torch.no_grad()
def predict_coarse(nets: list[torch.nn.Module], image_hu: np.ndarray, hu_window: tuple[float, float]) -> np.ndarray:
    """Argmax ``(z, y, x)`` uint8 of the nets' mean softmax on a stored coarse image (HU, input size)."""
    from segcore.volumes.intensity import normalize_hu

    tensor = normalize_hu(torch.from_numpy(np.array(image_hu, dtype=np.float32))[None, None], hu_window)
    probabilities = torch.stack([torch.softmax(net(tensor).float(), dim=1) for net in nets]).mean(0)
    return probabilities.argmax(1)[0].to(torch.uint8).numpy()


def to_original_grid(coarse_labels: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """A coarse label map on the case's original grid: nearest resize to the canonical shape, reorientation undone."""
    from segcore.volumes.geometry import Geometry, Reorientation
    from segcore.volumes.resample import resize_labels

    geometry = Geometry(**{key: tuple(value) for key, value in meta["geometry"].items()})
    reorientation = Reorientation(
        original=geometry,
        axes_zyx=tuple(meta["reorientation"]["axes_zyx"]),
        flips_zyx=tuple(meta["reorientation"]["flips_zyx"]),
    )
    canonical = resize_labels(coarse_labels, meta["canonical_shape"]).numpy()
    return np.ascontiguousarray(reorientation.undo(canonical))


def score_test_cases(store_path: Path, data_root: Path, label_map_of) -> dict[str, dict[str, list[float]]]:
    """Per test case ``{"dsc": [13 organs], "nsd": [...]}`` of a coarse label map, on the original grid.

    ``label_map_of`` maps a case's stored arrays to its ``(z, y, x)`` label map at the coarse size.
    """
    from segcore.evaluate.metrics import NSD_MIN_DSC, score_case
    from segcore.labels import ORGANS
    from segcore.store import CaseStore
    from segcore.volumes import read_label_map

    store = CaseStore(store_path)
    cases = {}
    for case_id in store.ids("test"):
        meta = store.meta(case_id)
        prediction = to_original_grid(label_map_of(store.arrays(case_id)), meta)
        gt, geometry = read_label_map(data_root / meta["label_path"])
        if gt.shape != prediction.shape:
            raise RuntimeError(f"{case_id}: prediction {prediction.shape} vs ground truth {gt.shape}")
        scores = score_case(gt, prediction, geometry.spacing_zyx, NSD_MIN_DSC)  # the design's rule, kept
        cases[case_id] = {metric: [round(getattr(scores[o], metric), 6) for o in ORGANS] for metric in ("dsc", "nsd")}
    store.close()
    return cases


def score_checkpoint(checkpoint: Path, store_path: Path, data_root: Path) -> dict[str, Any]:
    """Scores of one checkpoint's ensemble on the test cases."""
    from segcore.networks.checkpoint import build_networks, load_checkpoint

    payload = load_checkpoint(checkpoint)
    networks = build_networks(payload)
    nets = [networks[index].eval() for index in payload["inference"]["ensemble"]]
    hu_window = tuple(payload["inference"]["hu_window"])
    cases = score_test_cases(
        store_path, data_root, lambda arrays: predict_coarse(nets, arrays["coarse_image"], hu_window)
    )
    chosen = payload.get("metrics", {})
    return {"cases": cases, "variant": chosen.get("variant", f"{len(nets)} net(s)"), "step": chosen.get("step")}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (seed, arm) and score its ``last.pt`` and ``best.pt``: one results line."""
    torch.set_num_threads(job["threads"])
    run_dir = Path(job["run_dir"])
    load_before = os.getloadavg()
    wall = train_arm(job["command"], run_dir, job["threads"])
    last = run_dir / "last.pt"
    if not last.exists():
        last = sorted(run_dir.glob("round*/last.pt"))[-1]
    started = time.perf_counter()
    scores = {
        name: score_checkpoint(path, Path(job["store"]), Path(job["data_root"]))
        for name, path in (("last", last), ("best", run_dir / "best.pt"))
    }
    uif = run_dir / "round0" / "uif.csv"
    return {
        "seed": job["seed"],
        "arm": job["arm"],
        "run_dir": str(run_dir),
        "command": " ".join(job["command"]),
        "train_s": round(wall, 1),
        "score_s": round(time.perf_counter() - started, 1),
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
        "uif_csv": uif.read_text() if uif.exists() else None,
        "checkpoints": scores,
    }


def finished_jobs(function, jobs: list[dict[str, Any]], parallel: int, name):
    """``(job, result)`` of ``function(job)`` for every job, in ``parallel`` spawned processes, as
    each finishes; a failed job is reported (``name(job)`` FAILED: reason) and skipped, so one
    failed run does not lose the others."""
    with ProcessPoolExecutor(parallel, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(function, job): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                result = future.result()
            except Exception as error:
                print(f"{name(job)} FAILED: {error}", flush=True)
                continue
            yield job, result


# -- report ----------------------------------------------------------------------------------------
def bootstrap_interval(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95 % percentile interval of the mean of ``values`` over resamples of its entries."""
    if len(values) < 2:
        return float("nan"), float("nan")
    means = values[rng.integers(0, len(values), (BOOTSTRAP, len(values)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def organ_dsc(results: list[dict], arm: str, checkpoint: str, case_ids: list[str]) -> np.ndarray:
    """``(seeds, cases, 13)`` DSC of ``arm`` over the seeds it has finished (seed order)."""
    rows = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])
    return np.array([[r["checkpoints"][checkpoint]["cases"][c]["dsc"] for c in case_ids] for r in rows])


def report(results: list[dict], subsets: dict[str, list[str]], ceiling: dict, settings: Settings) -> tuple[str, dict]:
    """The printed report and its JSON figures."""
    from segcore.labels import ORGANS

    names = list(ORGANS.values())
    arms = [arm for arm in REPORT_ORDER if any(r["arm"] == arm for r in results)]
    rng = np.random.default_rng(0)
    lines, figures = [], {"settings": asdict(settings), "subsets": {k: len(v) for k, v in subsets.items()}}
    lines.append(
        f"ssl_gain: coarse stage {settings.coarse_size}^3, {settings.steps} steps per arm, {settings.labeled} labeled "
        f"(portal venous, 10 HU; 2 validate), {settings.unlabeled} unlabeled + {settings.test} test in random domains; "
        f"test subsets: " + ", ".join(f"{k} {len(v)} cases" for k, v in subsets.items())
    )
    complete = {arm: sorted(r["seed"] for r in results if r["arm"] == arm) for arm in arms}
    lines.append("seeds finished: " + ", ".join(f"{arm} {complete[arm]}" for arm in arms))

    for checkpoint in ("last", "best"):
        lines.append(f"\nMean DSC per seed ({checkpoint}.pt), subsets in-domain / shifted / all; training wall s")
        for arm in arms:
            cells = []
            for r in sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"]):
                per = [
                    np.mean([r["checkpoints"][checkpoint]["cases"][c]["dsc"] for c in ids]) for ids in subsets.values()
                ]
                cells.append(f"s{r['seed']}: " + "/".join(f"{v:.4f}" for v in per) + f" ({r['train_s']:.0f} s)")
            lines.append(f"  {arm:<24}" + "  ".join(cells))
    ceiling_means = [np.mean([np.mean(ceiling[c]["dsc"]) for c in ids]) for ids in subsets.values()]
    lines.append(f"  {CEILING:<24}" + "/".join(f"{v:.4f}" for v in ceiling_means) + " (stored 48^3 labels)")

    shifted = subsets["shifted"]
    lines.append("\nPer-organ DSC, shifted subset, last.pt, mean over seeds and cases")
    lines.append(f"{'organ':<22}" + "".join(f"{arm[:13]:>14}" for arm in arms) + f"{CEILING:>14}")
    organ_table = {arm: organ_dsc(results, arm, "last", shifted).mean((0, 1)) for arm in arms}
    ceiling_organs = np.array([ceiling[c]["dsc"] for c in shifted]).mean(0)
    for o, name in enumerate(names):
        lines.append(
            f"{name:<22}" + "".join(f"{organ_table[a][o]:>14.4f}" for a in arms) + f"{ceiling_organs[o]:>14.4f}"
        )
    lines.append(
        f"{'mean':<22}" + "".join(f"{organ_table[a].mean():>14.4f}" for a in arms) + f"{ceiling_organs.mean():>14.4f}"
    )
    figures["organ_dsc_shifted_last"] = {arm: organ_table[arm].tolist() for arm in arms}

    figures["differences"] = {}
    if CONTROL in arms:
        for checkpoint in ("last", "best"):
            lines.append(
                f"\n{checkpoint}.pt minus {CONTROL}: per case, mean over common seeds; mean over cases "
                f"[bootstrap 95 % interval]"
            )
            for arm in arms:
                if arm == CONTROL:
                    continue
                common = sorted(set(complete[arm]) & set(complete[CONTROL]))
                if not common:
                    continue
                cells = []
                for subset, ids in subsets.items():
                    mine = _seed_subset(results, arm, checkpoint, ids, common)
                    theirs = _seed_subset(results, CONTROL, checkpoint, ids, common)
                    per_case = (mine - theirs).mean(2).mean(0)
                    low, high = bootstrap_interval(per_case, rng)
                    cells.append(f"{subset} {per_case.mean():+.4f} [{low:+.4f}, {high:+.4f}]")
                    figures["differences"][f"{arm}-{CONTROL}/{checkpoint}/{subset}"] = {
                        "mean": float(per_case.mean()), "ci95": [low, high], "seeds": common,
                    }  # fmt: skip
                lines.append(f"  {arm:<24}" + "; ".join(cells) + f" (seeds {common})")

    if PRIMARY in arms and CONTROL in arms:
        common = sorted(set(complete[PRIMARY]) & set(complete[CONTROL]))
        mine = _seed_subset(results, PRIMARY, "last", shifted, common)
        theirs = _seed_subset(results, CONTROL, "last", shifted, common)
        per_organ = (mine - theirs).mean((0, 1))
        lines.append(f"\n{PRIMARY} minus {CONTROL} per organ, shifted subset, last.pt (seeds {common}):")
        lines.append("  " + ", ".join(f"{name} {value:+.4f}" for name, value in zip(names, per_organ)))
        per_seed = (mine - theirs).mean((1, 2))
        lines.append("  per seed: " + ", ".join(f"s{s} {v:+.4f}" for s, v in zip(common, per_seed)))
        gain = figures["differences"].get(f"{PRIMARY}-{CONTROL}/last/shifted", {})
        worst = float(per_organ.min())
        lines.append(
            f"  target: gain >= +0.03 with the interval above 0 -> {gain.get('mean', float('nan')):+.4f} "
            f"[{gain.get('ci95', [float('nan')] * 2)[0]:+.4f}, {gain.get('ci95', [float('nan')] * 2)[1]:+.4f}]; "
            f"no organ worse by > 0.02 -> worst {names[int(per_organ.argmin())]} {worst:+.4f}; "
            f"every seed positive -> {bool((per_seed > 0).all())}"
        )
        figures["primary_per_organ"] = dict(zip(names, per_organ.tolist()))
        figures["primary_per_seed"] = dict(zip(map(str, common), per_seed.tolist()))
    for arm, baseline in (("cps_uif", "cps"), ("cps_restart", "cps"), ("cps_uif", "cps_restart")):
        if arm not in arms or baseline not in arms:
            continue
        common = sorted(set(complete[arm]) & set(complete[baseline]))
        for subset, ids in subsets.items():
            diff = _seed_subset(results, arm, "last", ids, common) - _seed_subset(
                results, baseline, "last", ids, common
            )
            per_case = diff.mean(2).mean(0)
            low, high = bootstrap_interval(per_case, rng)
            lines.append(
                f"{arm} minus {baseline}, {subset}, last.pt: {per_case.mean():+.4f} "
                f"[{low:+.4f}, {high:+.4f}] (seeds {common})"
            )
    for r in results:
        if r["uif_csv"]:
            lines.append(f"UIF pick, {r['arm']} seed {r['seed']}: {uif_per_domain(r['uif_csv'])}")
    return "\n".join(lines), figures


def _seed_subset(results: list[dict], arm: str, checkpoint: str, ids: list[str], seeds: list[int]) -> np.ndarray:
    rows = {r["seed"]: r for r in results if r["arm"] == arm}
    return np.array([[rows[s]["checkpoints"][checkpoint]["cases"][c]["dsc"] for c in ids] for s in seeds])


def uif_per_domain(text: str) -> str:
    import csv
    import io

    from segcore.training.uif import per_domain_summary

    rows = list(csv.DictReader(io.StringIO(text)))
    return per_domain_summary(rows, [row["case_id"] for row in rows if row["selected"] == "1"])


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="experiments.ssl_gain", description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="folder for data, stores, runs and results (default: a new temp dir)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    parser.add_argument("--report", action="store_true", help="only print the report of what has finished")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    for name in ("labeled", "unlabeled", "test", "coarse_size", "steps", "validations", "seed", "threads", "parallel"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--train-seeds", type=int, nargs="+", default=list(defaults.train_seeds))
    parser.add_argument("--uif-keep", type=float, default=defaults.uif_keep, help="share or count UIF keeps")
    parser.add_argument(
        "--extra", action="append", default=[], metavar="KEY=VALUE",
        help="config override for every arm (a different benchmark: results go to their own runs)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    values = {name: getattr(args, name) for name in Settings.__dataclass_fields__ if name != "extra"}
    values["train_seeds"] = tuple(values["train_seeds"])
    explicit = {name for name in values if values[name] != getattr(defaults, name)}
    if args.quick:
        values.update({name: value for name, value in QUICK.items() if name not in explicit})
    return args, Settings(**values, extra=tuple(args.extra))


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_args(argv)
    torch.set_num_threads(settings.threads)
    work = (args.work or Path(tempfile.mkdtemp(prefix="ssl_gain_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data_settings = {name: getattr(settings, name) for name in DATA_FIELDS}
    data_key = hashlib.sha256(json.dumps(data_settings).encode()).hexdigest()[:8]
    data_root, upper_root = work / f"data_{data_key}", work / f"data_{data_key}_all_labeled"
    store = work / f"store_{data_key}_{settings.coarse_size}.lmdb"
    upper_store = work / f"store_{data_key}_{settings.coarse_size}_all_labeled.lmdb"
    manifest = work / f"cases_{data_key}.json"
    results_path = work / "results.jsonl"
    print(f"ssl_gain: {work}; {settings}; load average {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)

    started = time.perf_counter()
    if not manifest.exists():
        records = write_data(data_root, settings)
        manifest.write_text(json.dumps(records, indent=1))
    records = json.loads(manifest.read_text())
    prepare_store(data_root, store, settings)
    if "upper_bound" in args.arms:
        link_upper_bound_root(data_root, upper_root)
        prepare_store(upper_root, upper_store, settings)
    print(f"ssl_gain: data and stores ready in {time.perf_counter() - started:.0f} s", flush=True)

    from segcore.phantom.tissues import domain_group
    from segcore.store import CaseStore

    groups = {r["id"]: domain_group(r["domain"]) for r in records}
    reader = CaseStore(store)
    test_ids = reader.ids("test")
    reader.close()
    subsets = {
        "in-domain": [c for c in test_ids if groups[c] == IN_DOMAIN],
        "shifted": [c for c in test_ids if groups[c] != IN_DOMAIN],
        "all": test_ids,
    }
    ceiling_path = work / f"ceiling_{data_key}_{settings.coarse_size}.json"
    if not ceiling_path.exists():
        ceiling = score_test_cases(store, data_root, lambda arrays: np.array(arrays["coarse_label"]))
        ceiling_path.write_text(json.dumps(ceiling))
    ceiling = json.loads(ceiling_path.read_text())

    run_key = hashlib.sha256(json.dumps([asdict(settings)[k] for k in ("coarse_size", "steps", "validations",
                             "uif_keep", "threads", "extra")] + [data_key]).encode()).hexdigest()[:8]  # fmt: skip
    results = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []
    # One line per (seed, arm), the first: two invocations sharing a work folder may both finish a run.
    results = list({(r["seed"], r["arm"]): r for r in reversed(results) if r.get("run_key") == run_key}.values())
    done = {(r["seed"], r["arm"]) for r in results}
    jobs = []
    spe = {"main": steps_per_epoch(store)}
    if "upper_bound" in args.arms:
        spe["upper"] = steps_per_epoch(upper_store)
    for seed in settings.train_seeds:
        for arm in args.arms:
            if (seed, arm) in done or args.report:
                continue
            upper = arm == "upper_bound"
            arm_store = upper_store if upper else store
            overrides = arm_overrides(arm, settings, spe["upper" if upper else "main"], seed, manifest)
            run_dir = work / "runs" / run_key / f"seed{seed}" / arm
            command = [
                "sh", "coarse_seg/run.sh", "--nproc", "1", "--device", "cpu", "--config", TRAIN_CONFIG,
                f"store={arm_store}", f"output_dir={run_dir}", *overrides,
            ]  # fmt: skip
            jobs.append({
                "seed": seed, "arm": arm, "run_dir": str(run_dir), "command": command, "threads": settings.threads,
                "store": str(store), "data_root": str(data_root),
            })  # fmt: skip
    if jobs:
        print(f"ssl_gain: {len(jobs)} runs to train, {settings.parallel} at a time (run key {run_key})", flush=True)
        for job, result in finished_jobs(
            run_job, jobs, settings.parallel, lambda j: f"ssl_gain: seed {j['seed']} {j['arm']}"
        ):
            line = {"run_key": run_key, **result}
            with results_path.open("a") as stream:
                stream.write(json.dumps(line) + "\n")
            results.append(line)
            shifted = np.mean([np.mean(line["checkpoints"]["last"]["cases"][c]["dsc"]) for c in subsets["shifted"]])
            print(
                f"ssl_gain: seed {job['seed']} {job['arm']}: trained in {line['train_s']:.0f} s, "
                f"last.pt shifted mean DSC {shifted:.4f} ({time.perf_counter() - started:.0f} s so far)",
                flush=True,
            )
    if not results:
        print("ssl_gain: no finished runs yet")
        return 1
    text, figures = report(results, subsets, ceiling, settings)
    print("\n" + text)
    (work / "report.txt").write_text(text + "\n")
    (work / "report.json").write_text(json.dumps(figures, indent=1))
    print(f"\nssl_gain: total {time.perf_counter() - started:.0f} s; report in {work / 'report.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
