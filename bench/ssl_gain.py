"""What semi-supervised training buys on phantoms: supervised-only, CPS, and CPS + UIF on a shifted test domain.

Run from the repository root::

    .venv/bin/python -m bench.ssl_gain --work runs/ssl_gain   # defaults: 17-19 min on an idle 2-core CPU
    .venv/bin/python -m bench.ssl_gain --quick                 # smoke run, a couple of minutes
    .venv/bin/python -m bench.ssl_gain --work runs/ssl_gain --arms supervised_pair cps --semi semi.rampup_steps=400

Data (phantoms of size ``small``, written by :func:`segcore.phantom.write_dataset` into
``WORK/data_<hash of the data settings>`` in two calls, so that each split gets its own domain):

* ``--labeled`` cases (default 6) from one domain, ``PhantomDomain(phase="portal_venous",
  noise_sigma_hu=10)``: a single-centre labeled set. Fold 0 of 3 (a third of them) validates and
  picks ``best.pt``; the rest trains. Validation stays in the labeled domain: the test domain is
  never looked at before the test.
* ``--unlabeled`` cases (default 32), each with its own random domain (phase, noise 5-40 HU, HU
  offset, blur, enhancement, oral contrast: :func:`segcore.phantom.tissues.sample_domain`), so the
  test domain is among them, as with unlabeled scans gathered from many centres.
* ``--test`` held-out cases (default 8), all in a shifted domain (default arterial phase, 25 HU
  noise), written as the ``val`` split with labels.

Ids cannot collide: each split has its own id pattern (``FLARE22_Tr_*``, ``Case_*``,
``FLARE22_Ts_*``). The second call rewrites ``phantom_cases.json``, so both calls' records are
kept in ``WORK/cases_<hash>.json``; a later call with the same data settings reuses the data,
other settings get their own folder. The store is prepared by :func:`data_prepare.prepare.run`
with ``data_prepare/config.tiny.yaml`` and a ``--coarse-size`` (default 32³) whole-scan array
(cases already stored are skipped). Only the coarse stage is trained and compared: it sees the
whole scan, so it meets the domain shift and the unlabeled data as the fine stage would, and it
is the only stage that several arms can afford on a CPU.

Arms, each trained by the real command, ``sh coarse_seg/run.sh --nproc 1 --config
coarse_seg/config.tiny.yaml ...`` in a subprocess, with the same labeled data, training seed
(so the same initialisation of net 0, and of net 1 where there are two), network, optimiser,
augmentation and number of epochs (the same step budget per round):

* ``supervised``: ``semi.enabled=false``, one network;
* ``supervised_pair``: ``semi.enabled=true, semi.weight=0``: the CPS arm without its pseudo-label
  loss, i.e. two independently initialised nets trained on the labels alone, of which
  ``best.pt`` keeps net 0, net 1 or their ensemble, whichever validates best. CPS gets that
  choice too, so this, not ``supervised``, is the control that isolates the pseudo-labels;
* ``cps``: ``semi.enabled=true``, one round of cross pseudo supervision over every unlabeled case;
* ``cps_uif``: ``semi.rounds=2``: that round, then UIF keeps the ``--uif-keep`` most certain share
  of the unlabeled cases and a second round trains afresh on them (its ``best.pt`` is evaluated).
  Round 0 is the very command of the ``cps`` arm (runs are deterministic on the CPU with a
  given thread count: a rerun repeats every validation figure), so when both arms run, the ``cps`` run is copied in
  as round 0 and the command continues with ``--resume`` (UIF, then round 1); its wall time
  counts both.

``--semi semi.KEY=VALUE`` (repeatable) overrides the tiny config's ``semi`` section for the two
CPS arms. Runs live in ``WORK/runs/<arm>-<hash of the command>``: a later call with the same
``--work`` reuses every arm whose command is unchanged (the supervised ones when only ``--semi``
changed). Training processes get ``OMP_NUM_THREADS=--threads`` (default 1): on a 2-core machine
shared with other jobs, two OpenMP threads per process made steps 10-20 times slower (spinning
threads waiting for a core), one thread did not.

Evaluation follows inference on the original grid: each test case's stored ``coarse_image`` is
windowed and z-scored (:func:`segcore.intensity.normalize_hu`), run through the checkpoint's
ensemble (mean softmax), the argmax map is resized (nearest) to the full-resolution canonical
shape and the canonical reorientation is undone; the result is scored against the ground-truth
mask of ``val_mask/`` in the data folder with :func:`segcore.metrics.score_case` (FLARE22 DSC and NSD per
organ, spacing of the ground truth). The last column, ``coarse_labels``, scores the stored
coarse labels the same way: the ceiling of any coarse-stage net (thin organs do not survive
32³). Rows: organs and their mean over organs of the mean over cases; the footer gives each
arm's training wall time, the load average at its end (the machine may be shared) and the
variant ``best.pt`` kept, then for each arm the mean over test cases of its per-case mean DSC
minus that of ``supervised`` and of ``supervised_pair``, with the standard error (8 cases and
one training seed: differences within two standard errors are noise; ``--train-seed`` repeats
the training with other initialisations on the same data). The table, per-case scores,
settings and run records go to ``WORK/ssl_gain_<hash of settings and arms>.csv`` and ``.json``.
Figures are printed, never judged: this is not a test.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = "coarse_seg/config.tiny.yaml"
PREPARE_CONFIG = "data_prepare/config.tiny.yaml"
LABELED_DOMAIN = {"phase": "portal_venous", "noise_sigma_hu": 10.0}
VALIDATION_FOLDS = 3
"""The labeled cases are split into this many folds; fold 0 validates (picks ``best.pt``)."""
CEILING = "coarse_labels"
"""Column of the stored coarse labels scored like a prediction: the ceiling of a coarse-stage net."""
DATA_FIELDS = ("labeled", "unlabeled", "test", "seed", "test_phase", "test_noise_hu")
"""The settings that decide the phantoms: a work folder's data is reused while they stay the same."""
ARMS = ("supervised", "supervised_pair", "cps", "cps_uif")


@dataclass
class Settings:
    """Everything that decides the data and the training runs (saved with the results)."""

    labeled: int = 6
    unlabeled: int = 32
    test: int = 8
    coarse_size: int = 32
    epochs: int = 600
    val_every: int = 25
    seed: int = 0
    train_seed: int = 0
    test_phase: str = "arterial"
    test_noise_hu: float = 25.0
    uif_keep: float = 0.5
    threads: int = 1
    semi: tuple[str, ...] = ()


QUICK = {"labeled": 6, "unlabeled": 6, "test": 2, "epochs": 10, "val_every": 5}
"""``--quick``: enough to run every step once."""


def arm_overrides(arm: str, settings: Settings) -> list[str]:
    """``key=value`` overrides of the tiny coarse config for one arm (store and output_dir apart)."""
    size = settings.coarse_size
    common = [
        f"input_size=[{size},{size},{size}]",
        f"train.epochs={settings.epochs}",
        f"train.val_every={settings.val_every}",
        f"train.seed={settings.train_seed}",
        "data.workers=0",
    ]
    if arm == "supervised":
        return [*common, "semi.enabled=false"]
    if arm == "supervised_pair":  # the CPS arm without its pseudo-label loss: the control for two nets and a pick
        return [*common, "semi.enabled=true", "semi.rounds=1", "semi.weight=0"]
    rounds = 1 if arm == "cps" else 2
    return [*common, "semi.enabled=true", f"semi.rounds={rounds}", f"semi.uif_keep={settings.uif_keep}", *settings.semi]


# -- data ------------------------------------------------------------------------------------------
def write_data(root: Path, settings: Settings) -> list[dict[str, Any]]:
    """The phantoms: labeled cases in one domain, unlabeled ones in random domains, test cases shifted."""
    from segcore.phantom import write_dataset
    from segcore.phantom.tissues import PhantomDomain

    labeled_domain = PhantomDomain(**LABELED_DOMAIN)
    test_domain = PhantomDomain(phase=settings.test_phase, noise_sigma_hu=settings.test_noise_hu)
    workers = min(2, os.cpu_count() or 1)
    records = write_dataset(
        root, settings.labeled, 0, 0, "small", settings.seed, workers=workers, domain=labeled_domain
    )
    records += write_dataset(
        root, 0, settings.unlabeled, settings.test, "small", settings.seed, workers=workers, val_domain=test_domain
    )
    ids = [record["id"] for record in records]
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"{root}: phantom ids collide between the two generation calls")
    return records


def prepare_store(root: Path, store: Path, settings: Settings) -> None:
    """The LMDB store of the data root, whole scans at ``coarse_size``³ (cases already stored are kept)."""
    from data_prepare.prepare import PrepareConfig, run
    from segcore.config import load_config

    values = load_config(REPO_ROOT / PREPARE_CONFIG)
    size = settings.coarse_size
    values.update(data_root=str(root), out=str(store), coarse_size=[size] * 3, folds=VALIDATION_FOLDS)
    values.update(seed=settings.seed, workers=min(2, os.cpu_count() or 1))
    report = run(PrepareConfig(**values))
    if report.failed:
        raise RuntimeError(f"data_prepare failed on {len(report.failed)} case(s):\n{report.summary()}")


# -- training --------------------------------------------------------------------------------------
def _last_step(run_dir: Path) -> int:
    """Steps validated so far in a run (every round), from its ``metrics.jsonl`` files."""
    steps = 0
    for path in run_dir.rglob("metrics.jsonl"):
        lines = path.read_text().strip().splitlines()
        if lines:
            steps += json.loads(lines[-1])["step"]
    return steps


def steps_per_epoch(store_path: Path) -> int:
    """Steps of one epoch: the training fold in batches of the tiny config's 2, the last partial batch dropped."""
    from segcore.store import CaseStore

    store = CaseStore(store_path)
    train_ids, _ = store.fold(0)
    store.close()
    return max(1, len(train_ids) // 2)


def train_arm(
    arm: str, settings: Settings, store: Path, runs: Path, round0_from: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Train one arm with ``coarse_seg/run.sh`` (or reuse an identical finished run); returns its record.

    ``round0_from``: the record of the ``cps`` arm, whose run is round 0 of ``cps_uif``: it is
    copied there and the command continues it with ``--resume`` (UIF, then round 1).
    """
    overrides = arm_overrides(arm, settings)
    # Thread count is part of a run's identity: it changes the order of float sums, so the figures.
    digest = hashlib.sha256(json.dumps([str(store), settings.threads, *overrides]).encode()).hexdigest()[:8]
    run_dir = runs / f"{arm}-{digest}"
    record_path = run_dir / "arm.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        print(f"{arm}: reusing {run_dir} (trained in {record['wall_s']:.0f} s)")
        return record
    if run_dir.exists():
        raise RuntimeError(f"{run_dir} holds an unfinished run: remove it, or choose another --work")
    command = [
        "sh", "coarse_seg/run.sh", "--nproc", "1", "--device", "cpu", "--config", TRAIN_CONFIG,
        f"store={store}", f"output_dir={run_dir}", *overrides,
    ]  # fmt: skip
    run_dir.mkdir(parents=True)
    rounds = 2 if arm == "cps_uif" else 1
    earlier_s = 0.0
    if round0_from is not None:
        ignore = shutil.ignore_patterns("arm.json", "train.log")
        shutil.copytree(round0_from["run_dir"], run_dir / "round0", ignore=ignore)
        command.append("--resume")
        earlier_s = round0_from["wall_s"]
    load_before = os.getloadavg()
    started = time.perf_counter()
    with (run_dir / "train.log").open("w") as log:
        env = {**os.environ, "OMP_NUM_THREADS": str(settings.threads)}
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        bar = tqdm(total=rounds * settings.epochs * steps_per_epoch(store), desc=f"train {arm}", unit="step")
        while process.poll() is None:
            time.sleep(2.0)
            done = _last_step(run_dir)
            if done != bar.n:
                bar.update(done - bar.n)
        bar.close()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        tail = "\n".join((run_dir / "train.log").read_text().splitlines()[-20:])
        raise RuntimeError(f"{arm}: {' '.join(command)} exited with {process.returncode}:\n{tail}")
    record = {
        "arm": arm,
        "command": " ".join(command),
        "run_dir": str(run_dir),
        "rounds": rounds,
        "round0_from": round0_from["run_dir"] if round0_from else None,
        "wall_s": earlier_s + wall,
        "this_command_s": wall,
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
    }
    record_path.write_text(json.dumps(record, indent=1))
    shared = f" (+ {earlier_s:.0f} s of round 0, shared with cps)" if earlier_s else ""
    print(f"{arm}: trained in {wall:.0f} s{shared} -> {run_dir}")
    return record


# -- evaluation ------------------------------------------------------------------------------------
@torch.no_grad()
def predict_coarse(nets: list[torch.nn.Module], image_hu: np.ndarray, hu_window: tuple[float, float]) -> np.ndarray:
    """Argmax ``(z, y, x)`` uint8 of the nets' mean softmax on a stored coarse image (HU, input size)."""
    from segcore.intensity import normalize_hu

    tensor = normalize_hu(torch.from_numpy(np.array(image_hu, dtype=np.float32))[None, None], hu_window)
    probabilities = torch.stack([torch.softmax(net(tensor).float(), dim=1) for net in nets]).mean(0)
    return probabilities.argmax(1)[0].to(torch.uint8).numpy()


def to_original_grid(coarse_labels: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """A coarse label map on the case's original grid: nearest resize to the canonical shape, reorientation undone."""
    from segcore.geometry import Geometry, Reorientation
    from segcore.resample import resize_labels

    geometry = Geometry(**{key: tuple(value) for key, value in meta["geometry"].items()})
    reorientation = Reorientation(
        original=geometry,
        axes_zyx=tuple(meta["reorientation"]["axes_zyx"]),
        flips_zyx=tuple(meta["reorientation"]["flips_zyx"]),
    )
    canonical = resize_labels(coarse_labels, meta["canonical_shape"]).numpy()
    return np.ascontiguousarray(reorientation.undo(canonical))


def score_test_cases(store_path: Path, data_root: Path, coarse_labels_of: Callable[[dict], np.ndarray]) -> dict:
    """FLARE22 DSC and NSD per organ, on the original grid, of a coarse label map of every test case.

    ``coarse_labels_of`` maps a case's stored arrays to its ``(z, y, x)`` label map at the coarse size.
    """
    from segcore.evaluate import read_labels
    from segcore.metrics import score_case
    from segcore.store import CaseStore

    store = CaseStore(store_path)
    cases = {}
    for case_id in store.ids("test"):
        meta = store.meta(case_id)
        prediction = to_original_grid(coarse_labels_of(store.arrays(case_id)), meta)
        gt, geometry = read_labels(data_root / meta["label_path"])
        if gt.shape != prediction.shape:
            raise RuntimeError(f"{case_id}: prediction {prediction.shape} vs ground truth {gt.shape}")
        scores = score_case(gt, prediction, geometry.spacing_zyx)
        cases[case_id] = {organ: asdict(score) for organ, score in scores.items()}
    store.close()
    return cases


def evaluate_arm(checkpoint: Path, store_path: Path, data_root: Path) -> dict[str, Any]:
    """Scores of one checkpoint's ensemble on the test cases, and which variant the checkpoint holds."""
    from segcore.checkpoint import build_networks, load_checkpoint

    payload = load_checkpoint(checkpoint)
    networks = build_networks(payload)
    nets = [networks[index] for index in payload["inference"]["ensemble"]]
    hu_window = tuple(payload["inference"]["hu_window"])
    cases = score_test_cases(
        store_path, data_root, lambda arrays: predict_coarse(nets, arrays["coarse_image"], hu_window)
    )
    chosen = payload.get("metrics", {})
    return {"cases": cases, "variant": chosen.get("variant", "net0"), "step": chosen.get("step")}


def organ_means(cases: dict[str, dict[int, dict[str, float]]]) -> dict[int, dict[str, float]]:
    from segcore.labels import ORGANS

    return {
        organ: {metric: float(np.mean([case[organ][metric] for case in cases.values()])) for metric in ("dsc", "nsd")}
        for organ in ORGANS
    }


def case_mean_dsc(cases: dict[str, dict[int, dict[str, float]]]) -> dict[str, float]:
    return {case_id: float(np.mean([score["dsc"] for score in organs.values()])) for case_id, organs in cases.items()}


# -- report ----------------------------------------------------------------------------------------
def table(results: dict[str, dict[str, Any]], trained: dict[str, dict[str, Any]]) -> tuple[str, list[list[str]]]:
    """The printed table and its CSV rows (organ, then DSC and NSD per arm)."""
    from segcore.labels import ORGANS
    from segcore.metrics import TOLERANCE_MM

    arms = list(results)
    means = {arm: organ_means(results[arm]["cases"]) for arm in arms}
    width = 19
    lines = [f"{'':<22}{'':>7}" + "".join(f"{arm:>{width}}" for arm in arms)]
    lines.append(f"{'organ':<22}{'tol mm':>7}" + "".join(f"{'DSC':>{width - 9}}{'NSD':>9}" for _ in arms))
    rows = [["organ", *[f"{arm}_{metric}" for arm in arms for metric in ("DSC", "NSD")]]]
    for organ, name in ORGANS.items():
        values = [means[arm][organ][metric] for arm in arms for metric in ("dsc", "nsd")]
        lines.append(f"{name:<22}{TOLERANCE_MM[organ]:>7g}" + _cells(values, width))
        rows.append([name, *[f"{value:.4f}" for value in values]])
    mean_values = [float(np.mean([means[arm][o][m] for o in ORGANS])) for arm in arms for m in ("dsc", "nsd")]
    lines.append(f"{'mean':<22}{'':>7}" + _cells(mean_values, width))
    rows.append(["mean", *[f"{value:.4f}" for value in mean_values]])
    lines.append("")
    for arm in trained:
        record, result = trained[arm], results[arm]
        load = ", ".join(f"{value:.2f}" for value in record["load_after"])
        kept = f"{result['variant']} at step {result['step']}"
        shared = " (round 0 is the cps run)" if record.get("round0_from") else ""
        lines.append(
            f"{arm:<16} train {record['wall_s']:5.0f} s{shared}, load average at its end {load}; best.pt: {kept}"
        )
    for arm in trained:
        for baseline in ("supervised", "supervised_pair"):
            if baseline in results and arms.index(baseline) < arms.index(arm):
                lines.append(f"{arm} - {baseline}: " + paired_difference(results[arm], results[baseline]))
    return "\n".join(lines), rows


def paired_difference(result: dict[str, Any], baseline: dict[str, Any]) -> str:
    """Mean over test cases of the per-case mean DSC difference, with its standard error."""
    mine, theirs = case_mean_dsc(result["cases"]), case_mean_dsc(baseline["cases"])
    differences = np.array([mine[case_id] - theirs[case_id] for case_id in theirs])
    error = differences.std(ddof=1) / math.sqrt(len(differences)) if len(differences) > 1 else float("nan")
    return (
        f"mean DSC {differences.mean():+.4f} ± {error:.4f} (standard error over {len(differences)} test cases; "
        f"higher on {int((differences > 0).sum())}, lower on {int((differences < 0).sum())})"
    )


def _cells(values: list[float], width: int) -> str:
    return "".join(f"{values[i]:>{width - 9}.4f}{values[i + 1]:>9.4f}" for i in range(0, len(values), 2))


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="bench.ssl_gain", description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="folder for data, store, runs and results (default: a new temp dir)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--labeled", type=int, default=defaults.labeled, help="labeled cases (a third validate)")
    parser.add_argument("--unlabeled", type=int, default=defaults.unlabeled)
    parser.add_argument("--test", type=int, default=defaults.test, help="held-out cases in the shifted domain")
    parser.add_argument("--coarse-size", type=int, default=defaults.coarse_size, help="coarse array edge, voxels")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs per training round")
    parser.add_argument("--val-every", type=int, default=defaults.val_every, help="epochs between validations")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="phantom and fold seed")
    parser.add_argument(
        "--train-seed", type=int, default=defaults.train_seed, help="training seed (initialisations, data order)"
    )
    parser.add_argument("--test-phase", default=defaults.test_phase, help="contrast phase of the test cases")
    parser.add_argument("--test-noise-hu", type=float, default=defaults.test_noise_hu, help="their noise sigma")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch threads per training process")
    parser.add_argument("--uif-keep", type=float, default=defaults.uif_keep, help="share or count UIF keeps")
    parser.add_argument(
        "--semi", action="append", default=[], metavar="KEY=VALUE",
        help="override for both CPS arms, e.g. semi.weight=0.5 (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for override in args.semi:
        if not override.startswith("semi.") or "=" not in override:
            parser.error(f"--semi {override!r}: expected semi.KEY=VALUE")
    values = {name: getattr(args, name) for name in Settings.__dataclass_fields__ if name != "semi"}
    explicit = {name for name in values if getattr(args, name) != getattr(defaults, name)}
    if args.quick:
        values.update({name: value for name, value in QUICK.items() if name not in explicit})
    return args, Settings(**values, semi=tuple(args.semi))


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_args(argv)
    torch.set_num_threads(settings.threads)
    work = (args.work or Path(tempfile.mkdtemp(prefix="ssl_gain_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data_settings = {name: getattr(settings, name) for name in DATA_FIELDS}
    data_key = hashlib.sha256(json.dumps(data_settings).encode()).hexdigest()[:8]
    data_root, store = work / f"data_{data_key}", work / f"store_{data_key}_{settings.coarse_size}.lmdb"
    print(f"ssl_gain: {work}; {settings}; load average {os.getloadavg()}, {os.cpu_count()} CPUs")

    started = time.perf_counter()
    manifest = work / f"cases_{data_key}.json"
    if not manifest.exists():
        records = write_data(data_root, settings)
        manifest.write_text(json.dumps({"settings": data_settings, "cases": records}, indent=1))
    prepare_store(data_root, store, settings)
    print(f"ssl_gain: data and store ready in {time.perf_counter() - started:.0f} s")

    trained: dict[str, dict[str, Any]] = {}
    for arm in args.arms:
        round0_from = trained.get("cps") if arm == "cps_uif" else None
        trained[arm] = train_arm(arm, settings, store, work / "runs", round0_from)
    results = {}
    for arm in tqdm(args.arms, desc="evaluate"):
        results[arm] = evaluate_arm(Path(trained[arm]["run_dir"]) / "best.pt", store, data_root)
    # What a perfect coarse net would score: the stored coarse labels, brought back the same way.
    results[CEILING] = {"cases": score_test_cases(store, data_root, lambda arrays: np.array(arrays["coarse_label"]))}
    text, rows = table(results, trained)
    print(
        f"\nCoarse stage ({settings.coarse_size}³), {settings.test} test phantoms in the {settings.test_phase} "
        f"phase with {settings.test_noise_hu:g} HU noise; trained on {settings.labeled} labeled "
        f"(portal venous, 10 HU; a third validate) + {settings.unlabeled} unlabeled (random domains), "
        f"{settings.epochs} epochs per round, data seed {settings.seed}, training seed {settings.train_seed}"
        + (f", {' '.join(settings.semi)}" if settings.semi else "")
    )
    print(text)
    summary = {"settings": asdict(settings), "arms": args.arms, "trained": trained, "results": results, "table": text}
    stem = work / f"ssl_gain_{hashlib.sha256(json.dumps([summary['settings'], args.arms]).encode()).hexdigest()[:8]}"
    with stem.with_suffix(".csv").open("w", newline="") as stream:
        csv.writer(stream).writerows(rows)
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print(f"\nssl_gain: total {time.perf_counter() - started:.0f} s; table in {stem}.csv, everything in {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
