"""The semi-supervised verdict at convergence: does unlabeled data pay once the nets can learn?

Run from the repository root (resumable: rerun the same command after an interruption; every
finished run is appended to ``experiments/results/ssl_verdict.jsonl`` as it ends, per test case and
organ DSC, so that the figures outlive a work folder)::

    .venv/bin/python -m experiments.ssl_verdict --work runs/ssl_verdict            # phase A, then phase B
    .venv/bin/python -m experiments.ssl_verdict --work runs/ssl_verdict --report   # the tables from what has finished
    .venv/bin/python -m experiments.ssl_verdict --quick                            # smoke run of every step, minutes

Design (fixed before any method run was compared; changing it means a new benchmark):

* **Data** (phantoms of size ``small``, data seed 0, as :mod:`experiments.ssl_gain`): 14 labeled cases
  in one domain (portal venous, 10 HU noise: a single-centre labeled set), of which 6 train and
  8 validate (a fixed set, chosen once by a seeded permutation; the store's fold 0), 48 unlabeled
  cases and 48 test cases each with its own random domain
  (:func:`segcore.phantom.tissues.sample_domain`), the test cases reported as **in-domain**
  (``portal_venous``, 12 cases) and **shifted** (every other group, 36 cases) by
  :func:`segcore.phantom.tissues.domain_group`. The unlabeled cases' true labels are kept aside
  (``trainu_mask/``) for the upper bound and the pseudo-label accuracy only.
* **Stage, nets and recipe**: the coarse stage at 48³ trained by the real command
  (``sh coarse_seg/run.sh --nproc 1`` with ``coarse_seg/config.tiny.yaml``: base 8, depth 3,
  full-resolution output, deep supervision, its augmentation) with the calibrated recipe
  ``full_res_ds_1e-2`` of :mod:`experiments.time_to_accuracy` (AdamW 1e-2, warm-up 10 steps, stable,
  linear cool-down over the last 20 % of a run's steps), batch 2 labeled (+ 2 unlabeled for the
  semi-supervised arms) per net, one thread per process, two processes at a time.
* **A "pair"** is two differently initialised nets trained side by side (``semi.enabled`` with
  ``semi.weight=0``, Fourier amplitude sources from the labeled batch) and scored as the mean of
  their softmax: every arm below is a pair, so arms differ only in how unlabeled data is used.
* **Phase A, once** (training seed 0): ``supervised_pair`` (the 6 labeled cases) and
  ``upper_bound`` (the 6 labeled and the 48 unlabeled cases with their true labels), 3,000 steps
  each at the recipe's stable rate (``optimizer.schedule=constant``: warm-up, then constant, no
  cool-down, so the curve shows where the rate stops paying), validated every 150 steps (50
  epochs of 3 steps; ``upper_bound``: every 6 epochs of 27 steps, 162 steps) on the 8 validation
  cases (mean DSC of the pair's ensemble at the stored 48³ grid).
  Pre-registered rule: **final** = the median of ``supervised_pair``'s last three validations;
  **S1** = the first validation step at which its validation DSC is ≥ final − 0.01;
  **S2** = S1 / 2 (rounded down to a whole step). **Headroom** = ``upper_bound`` −
  ``supervised_pair``, ``last.pt`` of phase A, mean DSC on the 36 shifted test cases.
* **Phase B, training seeds 0, 1, 2** (each seed changes the nets' initialisation and the data
  order); every run uses the recipe (WSD over its own steps):

  - ``supervised_pair_s1``: the pair for S1 steps: the common start of the four arms below,
    each of which runs S2 more steps from its ``last.pt`` (``semi.init_from``: both nets, fresh
    optimisers, the same learning-rate shape for every one of them):
  - ``pair_continue``: the same two nets, labels only (unlabeled weight 0): **the control**;
  - ``cacps``: confidence-aware CPS (``semi.weak_strong``, ``semi.fourier_confidence``,
    ``semi.pseudo_dice=0.5``, Fourier amplitude sources from all volumes): **the primary arm**;
  - ``cps``: plain cross pseudo supervision (same view for both nets, amplitude sources from all
    volumes);
  - ``cps_uif``: ``cps`` whose unlabeled pool UIF filters after the first half of S2: UIF keeps
    the most certain half (24) of the unlabeled cases, ranked with the nets of that moment, and
    the run continues on them with its optimisers and learning-rate schedule carried on
    (``semi.rounds=2``, ``semi.round_init=continue``), so a restart cannot explain a difference;
  - the pseudo-label weight of the three CPS arms ramps up (sigmoid) over the first 35 % of S2;
  - ``dense_pretrain``: self-supervised dense pre-training of the encoder
    (:mod:`segcore.training.pretrain`) on the images of the 6 labeled training cases and the 48
    unlabeled cases (never the validation or test cases), S1 steps of batch 2, AdamW 1e-3 with
    the recipe's schedule shape (one setting, not tuned): two independently augmented views of
    each volume (spatial + intensity augmentation of the stage config), features of every
    encoder level sampled at 256 points per volume whose position in each view follows from the
    two known spatial transforms, a projection head (to 64, then 32 channels), InfoNCE at
    temperature 0.2 (the same point in the other view is the positive, every other point of the
    batch a negative); then the pair fine-tuned with labels only for S1 + S2 steps, both nets'
    encoders from the pre-trained one, their decoders freshly (differently) initialised;
  - ``supervised_pair_long``: the pair from scratch for S1 + S2 steps: **the control of
    ``dense_pretrain``**;
  - ``upper_bound``: the pair on all 54 cases with labels for S1 + S2 steps.
  - added after the verdict, in a fifth tier (design: ``experiments/ssl_shift_design.md``):
    ``ad_generic`` (GenericSSL's A&D) and ``sd_messenger`` (S&D-Messenger), one network each
    started from the pair's first, S2 steps, against ``pair_continue``; ``single_continue``, the
    pair's first net alone with labels only, S2 steps (their second control, reported).
  - added after the verdict, in a sixth tier, the equal-wall-time check of the arm that paid
    (written before any of its runs): ``pair_equal_time``, ``pair_continue`` for
    round(S2 × :data:`EQUAL_TIME_RATIO`) steps instead of S2 (3,006 for S2 = 1,050), the
    recipe's schedule over its own steps, from the same ``supervised_pair_s1``. The ratio is
    ``cacps``'s recorded wall time over ``pair_continue``'s (medians of the three seeds' runs,
    2,525.8 s and 882.2 s). ``cacps`` ran from starts this work folder no longer holds, so the
    two meet through the control each ran beside: per test case, ``cacps`` − ``pair_continue``
    (their starts) minus ``pair_equal_time`` − ``pair_continue`` (its starts), averaged over
    seeds, with the same bootstrap (:func:`via_control`). Reading, fixed now: ``cacps`` keeps
    its gain at equal wall time if that interval (shifted cases, ``last.pt``) is above 0; the
    labels-only pair is better at equal wall time if it is below 0; else the two cannot be told
    apart at equal wall time.
  - added after A&D's verdict, in a seventh tier (written before any of its runs):
    ``ad_generic_w10``, ``ad_generic`` with GenericSSL's own unlabeled weight, μ = 10 ramped up
    (sigmoid) over all S2 steps, as its README's training command has it, instead of this
    benchmark's μ = 1 over the first 35 % (about 5 times less pseudo-label weight over the run).
    Everything else is ``ad_generic``'s, from the same starts. Reading, fixed now: it gets the
    criterion's verdict sentence against ``pair_continue`` like the other arms; and
    ``ad_generic_w10`` − ``ad_generic`` (same starts, shifted cases, ``last.pt``): the heavier
    weight helps A&D if that interval is above 0, hurts it if below 0, else makes no difference
    that three seeds can show. ``ad_generic``'s recorded verdict stands either way; if
    ``ad_generic_w10`` pays, the docs say that A&D pays at its own weight and that this
    benchmark's shared weight hid it.

* **Scoring**: ``last.pt`` (primary) and ``best.pt`` of every run, the pair's mean softmax; each
  test case's stored 48³ image predicted, resized (nearest) back to its original grid and scored
  with :func:`segcore.evaluate.metrics.score_case` (FLARE22 DSC per organ; an organ absent from both maps
  scores 1). A case's score is its mean DSC over the 13 organs; the adrenal glands are also
  reported apart (at ~10 voxels of the 48³ grid, one voxel is 10 % of their DSC).
* **Comparison**: per test case, an arm minus its control, averaged over the seeds both have
  finished; the mean over cases with a paired bootstrap 95 % interval (10,000 resamples of the
  cases); per organ the same mean difference.
* **Validity checks** (else the verdict is "inconclusive", said so): the pair has plateaued
  (S1 ≤ 2,250, i.e. the last quarter of phase A gains less than 0.01) and the headroom on the
  shifted cases is ≥ 0.05.
* **Success criterion**: ``cacps`` − ``pair_continue`` (``last.pt``, shifted cases) ≥ +0.02 mean
  DSC **and** ≥ 25 % of the headroom, its 95 % interval above 0, and no organ of ≥ 50 voxels
  (median over the shifted test cases of its voxels in the stored 48³ labels) worse by more than
  0.02. The other arms are reported against their controls with the same figures, but only the
  primary arm decides the verdict; the verdict needs all three seeds of ``cacps`` and
  ``pair_continue``.
* **Also measured**: pseudo-label accuracy on the unlabeled pool, per organ, against the kept-aside
  labels: the teacher at the start of phase B (``supervised_pair_s1``), ``cps`` and ``cacps``
  half-way (``step<S2/2>.pt``, ``train.keep_steps``) and at the end (``last.pt``); for
  ``cps_uif`` the pseudo-label DSC of the cases UIF kept against those it dropped. Wall time of
  every run.
* **Order and budget**: phase A's two runs side by side; then phase B in priority tiers, so that
  an interrupted or over-long run has the primary comparison first: (1) ``supervised_pair_s1``,
  ``pair_continue``, ``cacps`` for every seed; (2) ``cps``, ``cps_uif``; (3) ``dense_pretrain``,
  ``supervised_pair_long``; (4) ``upper_bound``; then the pseudo-label scoring. Two nets on one
  thread take ~0.8 s a step (CPS ~1.7 s, CACPS ~2 s), so with S1 = 1,500 the whole run is
  ~5 h of this 2-core machine, tiers 1 and 2 with phase A ~3 h. ``--arms`` runs only some arms
  (seed by seed): the arms trained from scratch need no start checkpoint, so a session too short
  to remake the starts can still finish them.

Figures are printed and written to ``WORK/report.txt`` / ``WORK/report.json``; none is judged by
a test. The results file is the record of what finished: a new work folder regenerates the
(deterministic) phantoms and stores, skips every finished run, and retrains a finished
``supervised_pair_s1`` only when an arm still to run starts from its checkpoint, printing how
the retrained pair's test DSC compares with the recorded one. A retrained pair that scores
differently on any test case (another machine's floating-point order over 2,100 steps) is another
start: the runs from it carry its fingerprint (``start``, 8 hex digits of its per-case DSC), the
control ``pair_continue`` is run from it too (queued first), and a run is compared only with a
control from the same start (:func:`paired`); a run whose control from its start never finished
counts as not run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments import ssl_gain
from experiments.ssl_gain import IN_DOMAIN, TRAIN_CONFIG, bootstrap_interval, resumes, score_checkpoint, train_arm
from experiments.time_to_accuracy import RECIPES
from segcore.networks.checkpoint import load_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "experiments" / "results" / "ssl_verdict.jsonl"
RECIPE = RECIPES["full_res_ds_1e-2"]
PAIR = ["semi.enabled=true", "semi.method=cps", "semi.rounds=1", "semi.weight=0", "augment.fourier_sources=labeled"]
SEMI = ["semi.enabled=true", "semi.method=cps", "semi.weight=1.0", "augment.fourier_sources=all",
        "semi.rampup_share=0.35"]  # fmt: skip
"""Plain CPS, named (the stage configs' default method is ``cacps`` since its verdict); ``cacps`` below
sets its three switches itself, as it did when it was measured."""
ARM_OVERRIDES = {
    "pair_continue": PAIR,
    "cps": [*SEMI, "semi.rounds=1"],
    "cacps": [*SEMI, "semi.rounds=1", "semi.weak_strong=true", "semi.fourier_confidence=true", "semi.pseudo_dice=0.5"],
    "cps_uif": [*SEMI, "semi.rounds=2", "semi.round_init=continue"],
    "ad_generic": ["semi.enabled=true", "semi.networks=1", "semi.method=ad_generic", "network.arch=ad_generic",
                   "network.init_args.base=residual_unet3d", "semi.weight=1.0", "semi.rampup_share=0.35",
                   "semi.ddim_steps=5"],
    "sd_messenger": ["semi.enabled=true", "semi.networks=1", "semi.method=sd_messenger", "network.arch=sd_messenger",
                     "network.init_args.base=residual_unet3d", "semi.weight=1.0", "semi.rampup_share=0.35",
                     "semi.cutmix_size=16"],
}  # fmt: skip
"""The arms that continue from ``supervised_pair_s1`` for S2 steps (``ad_generic`` and
``sd_messenger``: one network, started from the pair's first; ``experiments/ssl_shift_design.md``)."""
ARM_OVERRIDES["ad_generic_w10"] = [  # A&D at GenericSSL's own unlabeled weight (tier 7)
    *(o for o in ARM_OVERRIDES["ad_generic"] if not o.startswith(("semi.weight=", "semi.rampup_share="))),
    "semi.weight=10.0", "semi.rampup_share=1.0",
]  # fmt: skip
STARTED = (*ARM_OVERRIDES, "single_continue", "pair_equal_time")
"""The arms that continue from ``supervised_pair_s1``: each is compared only with a control from its start."""
CONTROL, PRIMARY = "pair_continue", "cacps"
CONTROLS = {
    "cacps": "pair_continue", "cps": "pair_continue", "cps_uif": "pair_continue",
    "dense_pretrain": "supervised_pair_long", "upper_bound": "supervised_pair_long",
    "ad_generic": "pair_continue", "sd_messenger": "pair_continue", "single_continue": "pair_continue",
    "pair_equal_time": "pair_continue", "ad_generic_w10": "pair_continue",
}  # fmt: skip
TIERS = (
    ("supervised_pair_s1", "pair_continue", "cacps"), ("cps", "cps_uif"),
    ("dense_pretrain", "supervised_pair_long"), ("upper_bound",),
    ("ad_generic", "sd_messenger", "single_continue"),  # added after the verdict (ssl_shift_design.md)
    ("pair_equal_time",),  # added after the verdict: cacps at equal wall time
    ("ad_generic_w10",),  # added after A&D's verdict: A&D at GenericSSL's own unlabeled weight
)  # fmt: skip
EQUAL_TIME_RATIO = 2525.8 / 882.2
"""``cacps``'s wall time over ``pair_continue``'s in setting 1 (medians of the recorded runs of seeds
0, 1, 2, in seconds): ``pair_equal_time`` trains round(S2 × this) steps."""
VIA_CONTROL = (
    ("cacps", "pair_equal_time"), ("ad_generic", "cacps"), ("sd_messenger", "cacps"), ("ad_generic_w10", "cacps"),
)  # fmt: skip
"""Arms compared through the control each ran beside when they share no start (:func:`via_control`)."""
REPORT_ORDER = [arm for tier in TIERS for arm in tier]
JUDGED = ("cacps", "ad_generic", "sd_messenger", "ad_generic_w10")
"""The arms each given a verdict sentence by the criterion against ``pair_continue`` (in setting 1 only
``cacps``, the primary arm, decides; the others were added after its verdict)."""
VERSUS_PRIMARY = ("ad_generic", "sd_messenger", "ad_generic_w10")
"""Also reported against ``cacps`` and against ``single_continue`` (one net, labels only, from the same start)."""
VERSUS_MORE = (("ad_generic_w10", "ad_generic"),)
"""Further direct comparisons of arms from the same starts."""

SHIFT = "shift"
"""``--setting shift``: setting 2 of ``experiments/ssl_shift_design.md``: every unlabeled and shifted
test case drawn in a contrast phase other than the labeled cases' portal venous one."""
SHIFT_RESULTS = REPO_ROOT / "experiments" / "results" / "ssl_verdict_shift.jsonl"
SHIFT_TIERS = (("supervised_pair_s1", "pair_continue", "cacps", "ad_generic", "sd_messenger"), ("single_continue",))
SHIFTED_PHASES = ("non_contrast", "arterial")
SHIFTED_TEST_SHARE = 0.75
"""Setting 2's test cases: 36 of 48 shifted (drawn as the unlabeled ones), 12 in the labeled domain's phase."""
SHORT = {"supervised_pair_s1": "pair@S1", "pair_continue": "pair_cont", "dense_pretrain": "dense_pre",
         "supervised_pair_long": "pair_long", "upper_bound": "upper", "ad_generic": "A&D",
         "sd_messenger": "S&D-Mess", "single_continue": "single", "pair_equal_time": "pair_eqtime",
         "ad_generic_w10": "A&D μ10"}  # fmt: skip
"""Column names of the per-organ table."""
PHASE_A = ("supervised_pair", "upper_bound")
ADRENALS = ("right_adrenal_gland", "left_adrenal_gland")
SMALL_FIRST = (*ADRENALS, "gallbladder", "pancreas")
"""The organs the per-organ lines list first (the small ones the methods were made for), then the rest."""


def small_first(names: list[str]) -> list[int]:
    """Indices of ``names`` in reporting order: :data:`SMALL_FIRST`, then the others in their order."""
    return [names.index(n) for n in SMALL_FIRST] + [i for i, n in enumerate(names) if n not in SMALL_FIRST]


TOLERANCE = 0.01
"""S1: the first validation within this of the final value."""
SUCCESS_GAIN, SUCCESS_HEADROOM_SHARE, MIN_HEADROOM, ORGAN_LOSS, ORGAN_MIN_VOXELS = 0.02, 0.25, 0.05, 0.02, 50


@dataclass(frozen=True)
class Settings:
    """Everything that decides the data and the runs (saved with the results)."""

    labeled_train: int = 6
    validation: int = 8
    unlabeled: int = 48
    test: int = 48
    coarse_size: int = 48
    seed: int = 0
    phase_a_steps: int = 3000
    phase_a_validations: int = 20
    validations: int = 10
    seeds: tuple[int, ...] = (0, 1, 2)
    uif_keep: float = 0.5
    pretrain_lr: float = 0.001
    threads: int = 1
    parallel: int = 2

    @property
    def plateau_limit(self) -> int:
        """The largest S1 of a plateaued pair: the last quarter of phase A gained less than 0.01."""
        return self.phase_a_steps * 3 // 4


QUICK = {"labeled_train": 2, "validation": 2, "unlabeled": 4, "test": 4, "phase_a_steps": 24,
         "phase_a_validations": 4, "validations": 2, "seeds": (0,)}  # fmt: skip
"""``--quick``: every step once, in minutes."""


# -- the pre-registered rules -----------------------------------------------------------------------
def plateau(curve: list[tuple[int, float]], tolerance: float = TOLERANCE) -> tuple[int, float]:
    """``(S1, final)`` of a validation curve ``[(step, dice), ...]`` (steps increasing).

    ``final`` is the median of the last three validations (fewer if the curve is shorter); S1 is
    the step of the first validation at or above ``final - tolerance``.
    """
    if not curve:
        raise ValueError("plateau: an empty validation curve")
    final = float(np.median([dice for _, dice in curve[-3:]]))
    return next(step for step, dice in curve if dice >= final - tolerance), final


def verdict(
    gain: float, interval: tuple[float, float], headroom: float, worst_organ: float, valid: bool, arm: str = PRIMARY
) -> str:
    """The one-sentence verdict on ``arm`` by the pre-registered criterion."""
    if not valid:
        return "inconclusive: the validity checks failed (see above), so the benchmark cannot tell"
    needed = max(SUCCESS_GAIN, SUCCESS_HEADROOM_SHARE * headroom)
    if gain >= needed and interval[0] > 0 and worst_organ >= -ORGAN_LOSS:
        return f"unlabeled data pays: {arm} beats {CONTROL} by {gain:+.4f} (needed {needed:+.4f})"
    reasons = []
    if gain < needed:
        reasons.append(f"gain {gain:+.4f} < {needed:+.4f} needed")
    if interval[0] <= 0:
        reasons.append(f"interval [{interval[0]:+.4f}, {interval[1]:+.4f}] not above 0")
    if worst_organ < -ORGAN_LOSS:
        reasons.append(f"an organ loses {worst_organ:+.4f}")
    return f"unlabeled data does not pay here: {arm} vs {CONTROL}: " + "; ".join(reasons)


# -- data ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Paths:
    work: Path
    data_root: Path
    upper_root: Path
    store: Path
    upper_store: Path
    manifest: Path
    results: Path
    setting: str = "mixed"


def paths_of(work: Path, settings: Settings, results: Path | None = None, setting: str = "mixed") -> Paths:
    key = f"{settings.labeled_train + settings.validation}_{settings.unlabeled}_{settings.test}_{settings.seed}"
    key += "_shift" if setting == SHIFT else ""
    size = settings.coarse_size
    return Paths(
        work, work / f"data_{key}", work / f"data_{key}_all_labeled", work / f"store_{key}_{size}.lmdb",
        work / f"store_{key}_{size}_all_labeled.lmdb", work / f"cases_{key}.json", results or work / "results.jsonl",
        setting,
    )  # fmt: skip


def validation_ids(labeled: list[str], count: int, seed: int) -> list[str]:
    """The fixed validation cases: the first ``count`` of a seeded permutation of the labeled ids."""
    order = np.random.default_rng(seed).permutation(len(labeled))
    return sorted(sorted(labeled)[i] for i in order[:count])


def set_validation(store: Path, validation: list[str]) -> None:
    """Fold 0 of ``store`` validates on ``validation``; every other labeled case trains."""
    from segcore.store import CaseStore, StoreWriter

    reader = CaseStore(store)
    labeled = reader.ids("labeled")
    reader.close()
    with StoreWriter(store) as writer:
        splits = writer.read_splits()
        train = sorted(set(labeled) - set(validation))
        writer.put_splits({**splits, "folds": [sorted(validation), train]})


def prepare_data(paths: Paths, settings: Settings) -> list[dict[str, Any]]:
    """Phantoms, both stores and their folds (what exists is kept)."""
    gain_settings = ssl_gain.Settings(
        labeled=settings.labeled_train + settings.validation, unlabeled=settings.unlabeled, test=settings.test,
        coarse_size=settings.coarse_size, seed=settings.seed,
    )  # fmt: skip
    if not paths.manifest.exists():
        write = write_shift_data if paths.setting == SHIFT else ssl_gain.write_data
        records = write(paths.data_root, gain_settings)
        paths.manifest.write_text(json.dumps(records, indent=1))
    records = json.loads(paths.manifest.read_text())
    labeled = sorted(r["id"] for r in records if r["split"] == "labeled")
    validation = validation_ids(labeled, settings.validation, settings.seed)
    ssl_gain.prepare_store(paths.data_root, paths.store, gain_settings)
    set_validation(paths.store, validation)
    ssl_gain.link_upper_bound_root(paths.data_root, paths.upper_root)
    ssl_gain.prepare_store(paths.upper_root, paths.upper_store, gain_settings)
    set_validation(paths.upper_store, validation)
    return records


def write_shift_data(root: Path, settings: ssl_gain.Settings) -> list[dict[str, Any]]:
    """Setting 2's phantoms: the labeled cases of setting 1; the unlabeled cases and the first 3/4 of
    the test cases in a phase other than portal venous; the last 1/4 of the test cases portal venous
    (the rest of each domain drawn as :func:`~segcore.phantom.tissues.sample_domain` draws it)."""
    from segcore.phantom import write_dataset
    from segcore.phantom.tissues import PhantomDomain

    workers = min(2, os.cpu_count() or 1)
    shifted = round(settings.test * SHIFTED_TEST_SHARE)
    common = {"size": "small", "seed": settings.seed, "workers": workers}
    records = write_dataset(root, settings.labeled, 0, 0, domain=PhantomDomain(**ssl_gain.LABELED_DOMAIN), **common)
    records += write_dataset(root, 0, settings.unlabeled, shifted, phases=SHIFTED_PHASES, unlabeled_masks=True,
                             **common)  # fmt: skip
    records += write_dataset(root, 0, 0, settings.test - shifted, phases=(IN_DOMAIN,), start=shifted, **common)
    ids = [record["id"] for record in records]
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"{root}: phantom ids collide between the generation calls")
    return records


def test_subsets(paths: Paths) -> dict[str, list[str]]:
    """The test cases by domain: setting 1 by :func:`~segcore.phantom.tissues.domain_group` (a noisy
    portal venous case is shifted), setting 2 by contrast phase (its in-domain cases draw their noise)."""
    from segcore.phantom.tissues import domain_group
    from segcore.store import CaseStore

    def group(domain: dict) -> str:
        return domain["phase"] if paths.setting == SHIFT else domain_group(domain)

    groups = {r["id"]: group(r["domain"]) for r in json.loads(paths.manifest.read_text())}
    reader = CaseStore(paths.store)
    test_ids = reader.ids("test")
    reader.close()
    return {
        "in-domain": [c for c in test_ids if groups[c] == IN_DOMAIN],
        "shifted": [c for c in test_ids if groups[c] != IN_DOMAIN],
        "all": test_ids,
    }


def organ_voxels(paths: Paths, ids: list[str]) -> np.ndarray:
    """Median voxel count of each of the 13 organs in the stored 48³ labels of ``ids``."""
    from segcore.labels import ORGANS
    from segcore.store import CaseStore

    reader = CaseStore(paths.store)
    counts = np.array([np.bincount(np.asarray(reader.arrays(c)["coarse_label"]).ravel(), minlength=14)[1:14]
                       for c in ids])  # fmt: skip
    reader.close()
    assert counts.shape[1] == len(ORGANS)
    return np.median(counts, axis=0)


def train_size(store: Path) -> int:
    from segcore.store import CaseStore

    reader = CaseStore(store)
    train, _ = reader.fold(0)
    reader.close()
    return len(train)


# -- runs ------------------------------------------------------------------------------------------
def schedule_overrides(steps: int, validations: int, steps_per_epoch: int, seed: int, size: int) -> list[str]:
    """The recipe for ``steps`` steps, validating about ``validations`` times (every whole epoch
    nearest to ``steps / validations`` steps)."""
    epochs = math.ceil(steps / steps_per_epoch)
    val_every = max(1, round(steps / max(1, validations) / steps_per_epoch))
    return [
        f"input_size=[{size},{size},{size}]", f"train.epochs={epochs}", f"train.max_steps={steps}",
        f"train.val_every={val_every}", f"train.seed={seed}", "data.workers=0", *RECIPE,
    ]  # fmt: skip


def train_command(store: Path, run_dir: Path, overrides: list[str]) -> list[str]:
    return [
        "sh", "coarse_seg/run.sh", "--nproc", "1", "--device", "cpu", "--config", TRAIN_CONFIG,
        f"store={store}", f"output_dir={run_dir}", *overrides,
    ]  # fmt: skip


def phase_a_jobs(paths: Paths, settings: Settings, run_root: Path) -> list[dict[str, Any]]:
    jobs = []
    for arm in PHASE_A:
        store = paths.upper_store if arm == "upper_bound" else paths.store
        spe = max(1, train_size(store) // ssl_gain.BATCH)
        overrides = schedule_overrides(
            settings.phase_a_steps, settings.phase_a_validations, spe, 0, settings.coarse_size
        )
        run_dir = run_root / "phase_a" / arm
        command = train_command(store, run_dir, [*overrides, *PAIR, "optimizer.schedule=constant"])
        jobs.append(job("A", 0, arm, [command], run_dir, paths))
    return jobs


def job(phase: str, seed: int, arm: str, commands: list[list[str]], run_dir: Path, paths: Paths, after=()) -> dict:
    return {
        "phase": phase, "seed": seed, "arm": arm, "commands": commands, "run_dir": str(run_dir),
        "store": str(paths.store), "data_root": str(paths.data_root), "after": [str(p) for p in after],
    }  # fmt: skip


def report_order(setting: str) -> list[str]:
    """The phase-B arms of a setting, in the priority order of its tiers."""
    return [arm for tier in (SHIFT_TIERS if setting == SHIFT else TIERS) for arm in tier]


def phase_b_jobs(paths: Paths, settings: Settings, run_root: Path, s1: int) -> list[dict[str, Any]]:
    """Every phase-B run of the setting, in the priority order of its tiers (seed order within a tier)."""
    s2, size, validations = s1 // 2, settings.coarse_size, settings.validations
    spe = max(1, train_size(paths.store) // ssl_gain.BATCH)
    upper_spe = max(1, train_size(paths.upper_store) // ssl_gain.BATCH)
    half_way = ("cps", "cacps", "ad_generic_w10", *(("ad_generic", "sd_messenger") if paths.setting == SHIFT else ()))
    by_arm: dict[str, list[dict]] = {arm: [] for arm in REPORT_ORDER}
    for seed in settings.seeds:
        root = run_root / "phase_b" / f"seed{seed}"
        start = root / "supervised_pair_s1"
        by_arm["supervised_pair_s1"].append(job(
            "B", seed, "supervised_pair_s1",
            [train_command(paths.store, start, [*schedule_overrides(s1, validations, spe, seed, size), *PAIR])],
            start, paths,
        ))  # fmt: skip
        for arm, extra in ARM_OVERRIDES.items():
            overrides = [
                *schedule_overrides(s2, validations, spe, seed, size),
                *extra,
                f"semi.init_from={start}/last.pt",
            ]
            if arm in half_way:
                overrides.append(f"train.keep_steps=[{s2 // 2}]")
            if arm == "cps_uif":
                overrides += [f"semi.uif_keep={settings.uif_keep}", f"semi.uif_domains={paths.manifest}"]
            by_arm[arm].append(job("B", seed, arm, [train_command(paths.store, root / arm, overrides)], root / arm,
                                   paths, after=[start / "last.pt"]))  # fmt: skip
        single = [*schedule_overrides(s2, validations, spe, seed, size), f"train.init_weights={start}/last.pt"]
        by_arm["single_continue"].append(job(
            "B", seed, "single_continue", [train_command(paths.store, root / "single_continue", single)],
            root / "single_continue", paths, after=[start / "last.pt"],
        ))  # fmt: skip
        equal_time = [*schedule_overrides(round(s2 * EQUAL_TIME_RATIO), validations, spe, seed, size), *PAIR,
                      f"semi.init_from={start}/last.pt"]  # fmt: skip
        by_arm["pair_equal_time"].append(job(
            "B", seed, "pair_equal_time", [train_command(paths.store, root / "pair_equal_time", equal_time)],
            root / "pair_equal_time", paths, after=[start / "last.pt"],
        ))  # fmt: skip
        long = schedule_overrides(s1 + s2, validations, spe, seed, size)
        pretrain_dir = root / "dense_pretrain_encoder"  # beside the run: train_arm clears a run never checkpointed
        pretrain = [
            sys.executable, "-m", "segcore.training.pretrain", "--config", TRAIN_CONFIG, f"store={paths.store}",
            f"output_dir={pretrain_dir}", *schedule_overrides(s1, 1, spe, seed, size),
            f"optimizer.lr={settings.pretrain_lr}",
        ]  # fmt: skip
        finetune = [*long, *PAIR, f"train.init_encoder={pretrain_dir}/encoder.pt"]
        by_arm["dense_pretrain"].append(job(
            "B", seed, "dense_pretrain", [pretrain, train_command(paths.store, root / "dense_pretrain", finetune)],
            root / "dense_pretrain", paths,
        ))  # fmt: skip
        long_dir = root / "supervised_pair_long"
        by_arm["supervised_pair_long"].append(job(
            "B", seed, "supervised_pair_long", [train_command(paths.store, long_dir, [*long, *PAIR])], long_dir, paths,
        ))  # fmt: skip
        upper = [*schedule_overrides(s1 + s2, validations, upper_spe, seed, size), *PAIR]
        by_arm["upper_bound"].append(job(
            "B", seed, "upper_bound", [train_command(paths.upper_store, root / "upper_bound", upper)],
            root / "upper_bound", paths,
        ))  # fmt: skip
    pseudo = {
        **PSEUDO,
        **{arm: {f"{arm}@half": f"step{s2 // 2}.pt", f"{arm}@end": "last.pt"} for arm in half_way},
    }
    for arm, checkpoints in pseudo.items():
        for item in by_arm[arm]:
            item["pseudo"] = checkpoints
    return [j for arm in report_order(paths.setting) for j in by_arm[arm]]


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one run (its commands in order; each resumes where it stopped) and score its checkpoints.

    ``train_s`` is this call's wall time; ``resumed`` says that part of the run was done by an earlier
    call, so that ``train_s`` is not the run's cost."""
    torch.set_num_threads(1)
    run_dir = Path(job["run_dir"])
    load_before = os.getloadavg()
    wall, resumed = 0.0, False
    for command in job["commands"]:
        output = Path(next(c for c in command if c.startswith("output_dir=")).split("=", 1)[1])
        resumed = resumed or resumes(output) or (output / "encoder.pt").exists()
        if "segcore.training.pretrain" in command:
            wall += run_pretrain(command)
        else:
            wall += train_arm(command, output, 1)
    started = time.perf_counter()
    last = run_dir / "last.pt"
    if not last.exists():
        last = sorted(run_dir.glob("round*/last.pt"))[-1]
    scores = {
        name: compact(score_checkpoint(path, Path(job["store"]), Path(job["data_root"])))
        for name, path in (("last", last), ("best", run_dir / "best.pt"))
    }
    pseudo = pseudo_label_scores(job) if job.get("pseudo") else {}
    return {
        **{k: job[k] for k in ("phase", "seed", "arm", "run_dir")}, **pseudo,
        "commands": [" ".join(c) for c in job["commands"]], "train_s": round(wall, 1),
        "resumed": resumed, "score_s": round(time.perf_counter() - started, 1), "load_before": list(load_before),
        "load_after": list(os.getloadavg()), "curve": validation_curve(run_dir), "checkpoints": scores,
    }  # fmt: skip


def wall_of(line: dict[str, Any]) -> str:
    """A recorded run's training wall time as the report prints it: ``"882 s"``, or ``"339 s, resumed"``
    where an earlier call did part of the run (the figure is then only the last call's)."""
    return f"{line['train_s']:.0f} s" + (", resumed" if line.get("resumed") else "")


def compact(scores: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's scores as the results file keeps them: DSC per case and organ, 4 decimals."""
    cases = {case: {"dsc": [round(v, 4) for v in values["dsc"]]} for case, values in scores["cases"].items()}
    return {**scores, "cases": cases}


def run_pretrain(command: list[str]) -> float:
    """Run (or resume) the dense pre-training command; returns its wall time."""
    import subprocess

    output = Path(next(c for c in command if c.startswith("output_dir=")).split("=", 1)[1])
    if (output / "encoder.pt").exists():
        return 0.0
    if (output / "last.pt").exists():
        command = [*command, "--resume"]
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with (output / "pretrain.log").open("a") as log:
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join((output / "pretrain.log").read_text().splitlines()[-20:])
        raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}:\n{tail}")
    return time.perf_counter() - started


def validation_curve(run_dir: Path) -> list[tuple[int, float]]:
    """``[(step, ensemble validation DSC), ...]`` of a run (its rounds in order)."""
    points = []
    for path in [*sorted(run_dir.glob("round*/metrics.jsonl")), run_dir / "metrics.jsonl"]:
        if path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                variant = record.get("ensemble") or record["net0"]
                points.append((int(record["step"]), float(variant["mean_dice"])))
    return points


def run_jobs(
    jobs: list[dict[str, Any]], parallel: int, paths: Paths, results: list[dict], settings_key: str,
    templates: list[dict[str, Any]] = (),
) -> None:  # fmt: skip
    """Run ``jobs`` ``parallel`` at a time in list order, each once every path in its ``after``
    exists; every finished one is appended to ``paths.results`` at once. A job that starts from a
    start other than the recorded one (:func:`start_tag`) is tagged with it, and its control is
    queued first from that start (from ``templates``, every phase-B job) if it has none. A failed job
    is reported and the others go on."""
    pending, running = list(jobs), {}
    with ProcessPoolExecutor(parallel, mp_context=get_context("spawn")) as pool:
        while pending or running:
            while len(running) < parallel:
                item = next((j for j in pending if all(finished(p) for p in j["after"])), None)
                if item is None:
                    break
                pending.remove(item)
                if item["after"] and item["phase"] == "B" and "start" not in item:
                    item["start"] = start_tag(results, item["seed"], start_fingerprint(item))
                    if needs_control(item, item["start"], results, [*pending, *running.values()]):
                        control = next(j for j in templates if (j["seed"], j["arm"]) == (item["seed"], CONTROL))
                        pending[:0] = [{**control, "start": item["start"]}, item]  # the control first
                        print(f"ssl_verdict: seed {item['seed']} starts from {item['start']}, not the recorded "
                              f"start: {CONTROL} runs from it too", flush=True)  # fmt: skip
                        continue
                running[pool.submit(run_job, item)] = item
            if not running:
                names = ", ".join(f"seed {j['seed']} {j['arm']}" for j in pending)
                print(f"ssl_verdict: cannot start {names}: what they start from is missing", flush=True)
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                item = running.pop(future)
                try:
                    line = future.result()
                except Exception as error:  # one failed run must not lose the others
                    print(f"ssl_verdict: phase {item['phase']} seed {item['seed']} {item['arm']} FAILED: {error}",
                          flush=True)  # fmt: skip
                    continue
                if item.get("rerun"):  # a start checkpoint made again: its recorded figures stay
                    recorded = next(r for r in results if r["phase"] == "B" and r["seed"] == item["seed"]
                                    and r["arm"] == item["arm"] and not r.get("start"))  # fmt: skip
                    print_ = fingerprint(line["checkpoints"]["last"])
                    (Path(item["run_dir"]) / START_FILE).write_text(json.dumps({"fingerprint": print_}) + "\n")
                    print(f"ssl_verdict: seed {item['seed']} {item['arm']} retrained: test DSC of last.pt "
                          f"{mean_dsc(line):.4f}, recorded {mean_dsc(recorded):.4f}", flush=True)  # fmt: skip
                    line["start"] = start_tag(results, item["seed"], print_)
                    if line["start"] is None or any(unit(r) == unit(line) and r["arm"] == item["arm"] for r in results):
                        continue  # the recorded start itself, or this other one already kept
                if item.get("start"):
                    line["start"] = item["start"]
                line["settings_key"] = settings_key
                paths.results.parent.mkdir(parents=True, exist_ok=True)
                with paths.results.open("a") as stream:
                    stream.write(json.dumps(line) + "\n")
                results.append(line)
                print(f"ssl_verdict: phase {line['phase']} seed {line['seed']} {line['arm']}: trained in "
                      f"{wall_of(line)}", flush=True)  # fmt: skip


def finished(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` is the ``last.pt`` of a run that has finished: a run writes its
    ``last.pt`` all along, and a run started from an unfinished one would start from the wrong step."""
    if not Path(checkpoint).exists():
        return False
    return bool(load_checkpoint(checkpoint).get("training_state", {}).get("finished"))


def is_done(item: dict[str, Any], results: list[dict]) -> bool:
    """Whether a job has a result that can be compared: from the recorded start (no ``start``), or
    from another start from which its control was run too (else it is run again, from this folder's start)."""
    lines = [r for r in results if (r["phase"], r["seed"], r["arm"]) == (item["phase"], item["seed"], item["arm"])]
    control = CONTROLS.get(item["arm"]) if item["arm"] in STARTED else None
    controls = {unit(r) for r in results if r["phase"] == "B" and r["arm"] == control}
    return any(not r.get("start") or control is None or unit(r) in controls for r in lines)


def to_run(jobs: list[dict[str, Any]], results: list[dict]) -> list[dict[str, Any]]:
    """The jobs without a result (:func:`is_done`), in order, each preceded by the finished runs whose
    ``last.pt`` it starts from and this work folder lacks (marked ``rerun``: remade, their recorded
    figures kept), so that a start checkpoint is remade just before the first run that needs it."""
    missing = [j for j in jobs if is_done(j, results)]
    remade = {str(Path(j["run_dir"]) / "last.pt"): {**j, "rerun": True} for j in missing}
    remade = {path: j for path, j in remade.items() if not finished(path)}
    order = []
    for item in jobs:
        if is_done(item, results):
            continue
        order += [remade.pop(path) for path in item["after"] if path in remade]
        order.append(item)
    return order


def only_arms(
    order: list[dict[str, Any]], arms: list[str] | None, seeds: list[int] | None = None
) -> list[dict[str, Any]]:  # fmt: skip
    """The jobs of ``order`` (:func:`to_run`'s) of the named arms (all if None) and seeds (all if
    None), with the start runs they need, by seed (stable: a start stays before its runs), so that
    the arms of one seed run close together; the other arms wait for a later run (a control from a
    remade start is still queued by :func:`run_jobs`). A start belongs to one seed, so two processes
    given different ``seeds`` never train the same run."""
    kept = [j for j in order if (arms is None or j["arm"] in arms) and (seeds is None or j["seed"] in seeds)]
    needed = {path for j in kept for path in j["after"]}
    kept = [j for j in order if j in kept or str(Path(j["run_dir"]) / "last.pt") in needed]
    return sorted(kept, key=lambda j: j["seed"])


def seed_numbers(text: str) -> list[int]:
    """``--seeds``: comma-separated seed numbers."""
    try:
        return [int(seed) for seed in text.split(",") if seed.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are comma-separated integers, not {text!r}") from None


def arm_names(text: str) -> list[str]:
    """``--arms``: comma-separated names of phase-B arms."""
    arms = [arm.strip() for arm in text.split(",") if arm.strip()]
    unknown = sorted(set(arms) - set(REPORT_ORDER))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown arm(s) {', '.join(unknown)}; arms are {', '.join(REPORT_ORDER)}")
    return arms


# -- one start for a run and its control -----------------------------------------------------------
START_FILE = "start.json"
"""Beside a ``supervised_pair_s1`` run's ``last.pt``: the fingerprint of what it scores."""


def fingerprint(scores: dict[str, Any]) -> str:
    """8 hex digits of a checkpoint's per-case test DSC (``checkpoints.last`` of a result line)."""
    return hashlib.sha256(json.dumps(scores["cases"], sort_keys=True).encode()).hexdigest()[:8]


def start_tag(results: list[dict], seed: int, print_: str) -> str | None:
    """None when a start with fingerprint ``print_`` is the recorded ``supervised_pair_s1`` of
    ``seed`` (the same weights: it scores the same on every case), else the fingerprint: runs from
    it are paired only with a control run from it too (a remade start differs when another machine's
    floating-point order changes 2,100 steps of training)."""
    recorded = [r for r in results if r["phase"] == "B" and r["seed"] == seed and r["arm"] == "supervised_pair_s1"]
    original = next((r for r in recorded if not r.get("start")), None)
    return None if original is not None and fingerprint(original["checkpoints"]["last"]) == print_ else print_


def start_fingerprint(item: dict[str, Any]) -> str:
    """The fingerprint of the start a job begins from: read beside it, or scored now and kept there."""
    start = Path(item["after"][0]).parent
    kept = start / START_FILE
    if kept.exists():
        return json.loads(kept.read_text())["fingerprint"]
    print_ = fingerprint(compact(score_checkpoint(start / "last.pt", Path(item["store"]), Path(item["data_root"]))))
    kept.write_text(json.dumps({"fingerprint": print_}) + "\n")
    return print_


def needs_control(item: dict[str, Any], tag: str | None, results: list[dict], queued: list[dict]) -> bool:
    """Whether an arm about to start from start ``tag`` lacks its control from that start, run or queued."""
    if tag is None or item["arm"] == CONTROL or CONTROLS.get(item["arm"]) != CONTROL:
        return False
    have = {unit(r) for r in results if r["phase"] == "B" and r["arm"] == CONTROL}
    have |= {unit(j) for j in queued if j["arm"] == CONTROL and j.get("start")}
    return unit({"seed": item["seed"], "start": tag}) not in have


def mean_dsc(line: dict) -> float:
    return float(np.mean([values["dsc"] for values in line["checkpoints"]["last"]["cases"].values()]))


def read_results(path: Path, settings_key: str) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    lines = [line for line in lines if line.get("settings_key", settings_key) == settings_key]
    return list({(r["phase"], r["arm"], unit(r)): r for r in reversed(lines)}.values())  # the first of each


# -- pseudo-labels ---------------------------------------------------------------------------------
PSEUDO = {"supervised_pair_s1": {"teacher@start": "last.pt"}, "cps_uif": {"cps_uif@half": "round0/last.pt"}}
"""The checkpoints (relative to the run) whose pseudo-labels a run's own job scores, while they exist;
``cps`` and ``cacps`` add ``@half`` (``step<S2/2>.pt``) and ``@end`` (``last.pt``), and in setting 2
``ad_generic`` and ``sd_messenger`` too. A pair's pseudo-label is what the other net predicts (scored: the
ensemble); S&D-Messenger's is its own prediction; A&D's is made by D_ξ and D_ψ
(:func:`segcore.training.generic_ssl.pseudo_labels`), scored as ``ad_generic@…``, and what its D_θ
predicts as ``ad_generic@… D_θ``."""


def pseudo_label_scores(job: dict[str, Any]) -> dict[str, Any]:
    """Pseudo-label DSC per unlabeled case and organ of the job's checkpoints' ensembles (4 decimals),
    and for ``cps_uif`` the cases UIF kept."""
    import csv
    import io

    from experiments.ssl_pseudo_labels import score_unlabeled

    run_dir, store, data_root = Path(job["run_dir"]), Path(job["store"]), Path(job["data_root"])
    ad = job["arm"].startswith("ad_generic")
    modes = {"": "pseudo_label", " D_θ": "ensemble"} if ad else {"": "ensemble"}
    scores = {
        name + suffix: {case: [round(v, 4) for v in values] for case, values in
                        score_unlabeled(run_dir / relative, store, data_root, mode).items()}
        for name, relative in job["pseudo"].items() for suffix, mode in modes.items()
    }  # fmt: skip
    out: dict[str, Any] = {"pseudo": scores}
    uif = run_dir / "round0" / "uif.csv"
    if uif.exists():
        out["uif_kept"] = [r["case_id"] for r in csv.DictReader(io.StringIO(uif.read_text())) if r["selected"] == "1"]
    return out


# -- report ----------------------------------------------------------------------------------------
def unit(line: dict) -> str:
    """What a result is paired by: its seed, and for a run started from a remade ``supervised_pair_s1``
    that came out different (another machine's arithmetic), that start's fingerprint: ``"0"``, ``"0/3fa2c1d0"``."""
    return f"{line['seed']}/{line['start']}" if line.get("start") else str(line["seed"])


def seed_of(unit_name: str) -> str:
    """The seed of a :func:`unit`: ``"0/3fa2c1d0"`` -> ``"0"``."""
    return unit_name.split("/")[0]


def dsc_of(results: list[dict], phase: str, arm: str, checkpoint: str, ids: list[str], units) -> np.ndarray:
    """``(units, cases, 13)`` DSC of one arm."""
    rows = {unit(r): r for r in results if r["phase"] == phase and r["arm"] == arm}
    return np.array([[rows[u]["checkpoints"][checkpoint]["cases"][c]["dsc"] for c in ids] for u in units])


def seeds_of(results: list[dict], phase: str, arm: str) -> list[str]:
    """The units (:func:`unit`) of one arm's results, by seed."""
    lines = sorted((r for r in results if r["phase"] == phase and r["arm"] == arm), key=lambda r: (r["seed"], unit(r)))
    return [unit(r) for r in lines]


def paired(results: list[dict], arm: str, control: str) -> list[str]:
    """The units both arms have: the same seed *and* the same start, never a run against a control
    that started from another checkpoint."""
    return [u for u in seeds_of(results, "B", arm) if u in set(seeds_of(results, "B", control))]


def phase_a_summary(results: list[dict], subsets: dict[str, list[str]], settings: Settings) -> dict[str, Any] | None:
    """S1, S2, final, headroom and the validity checks, once both phase-A runs have finished."""
    rows = {r["arm"]: r for r in results if r["phase"] == "A"}
    if set(rows) != set(PHASE_A):
        return None
    s1, final = plateau([tuple(p) for p in rows["supervised_pair"]["curve"]])
    shifted = subsets["shifted"]
    pair = dsc_of(results, "A", "supervised_pair", "last", shifted, ["0"]).mean()
    upper = dsc_of(results, "A", "upper_bound", "last", shifted, ["0"]).mean()
    headroom = float(upper - pair)
    plateaued = s1 <= settings.plateau_limit
    return {
        "s1": s1, "s2": s1 // 2, "final": final, "plateaued": plateaued, "headroom_shifted": headroom,
        "pair_shifted": float(pair), "upper_shifted": float(upper),
        "valid": bool(plateaued and headroom >= MIN_HEADROOM),
    }  # fmt: skip


def report(
    results: list[dict], subsets: dict[str, list[str]], voxels: np.ndarray, settings: Settings, setting: str = "mixed"
) -> tuple[str, dict]:
    from segcore.labels import ORGANS

    names = list(ORGANS.values())
    adrenal = [names.index(n) for n in ADRENALS]
    drawn = "phase other than portal venous" if setting == SHIFT else "any domain"
    lines = [
        f"ssl_verdict, setting {2 if setting == SHIFT else 1}: coarse stage {settings.coarse_size}^3, recipe "
        f"full_res_ds_1e-2; {settings.labeled_train} labeled train + {settings.validation} validation (portal venous, "
        f"10 HU), {settings.unlabeled} unlabeled ({drawn}), test "
        + ", ".join(f"{k} {len(v)}" for k, v in subsets.items())
    ]
    figures: dict[str, Any] = {"settings": asdict(settings), "setting": setting}
    summary = phase_a_summary(results, subsets, settings)
    lines.append("\nPhase A (seed 0, constant rate): validation mean DSC of the pair's ensemble by step")
    for row in sorted((r for r in results if r["phase"] == "A"), key=lambda r: r["arm"]):
        curve = ", ".join(f"{step}: {dice:.4f}" for step, dice in row["curve"])
        means = [dsc_of(results, "A", row["arm"], "last", ids, ["0"]).mean() for ids in subsets.values()]
        lines.append(f"  {row['arm']:<16} {curve}")
        lines.append(f"  {'':<16} last.pt test in/shifted/all {'/'.join(f'{m:.4f}' for m in means)}; "
                     f"{wall_of(row)}")  # fmt: skip
    if summary:
        lines.append(
            f"  rule: final {summary['final']:.4f}, S1 {summary['s1']} (plateaued: S1 <= {settings.plateau_limit}: "
            f"{summary['plateaued']}), S2 {summary['s2']}; headroom on the shifted cases "
            f"{summary['headroom_shifted']:+.4f} "
            f"(upper {summary['upper_shifted']:.4f} - pair {summary['pair_shifted']:.4f}; >= {MIN_HEADROOM}: "
            f"{summary['headroom_shifted'] >= MIN_HEADROOM}) -> valid: {summary['valid']}"
        )
    figures["phase_a"] = summary
    arms = [arm for arm in report_order(setting) if seeds_of(results, "B", arm)]
    if not arms:
        return "\n".join(lines), figures

    lines.append(
        "\nPhase B, mean DSC per seed (last.pt): in-domain / shifted / all, adrenals (shifted); training wall s"
    )
    for arm in arms:
        cells = []
        for seed in seeds_of(results, "B", arm):
            per = [dsc_of(results, "B", arm, "last", ids, [seed]).mean() for ids in subsets.values()]
            adrenals = dsc_of(results, "B", arm, "last", subsets["shifted"], [seed])[..., adrenal].mean()
            run = next(r for r in results if r["phase"] == "B" and r["arm"] == arm and unit(r) == seed)
            cells.append(f"s{seed}: " + "/".join(f"{v:.4f}" for v in per) + f" adr {adrenals:.3f} ({wall_of(run)})")
        lines.append(f"  {arm:<22}" + "  ".join(cells))

    shifted = subsets["shifted"]
    lines.append(
        "\nPer-organ DSC, shifted cases, last.pt, mean over seeds and cases (voxels: median in the 48^3 labels)"
    )
    lines.append(f"{'organ':<22}{'voxels':>8}" + "".join(f"{SHORT.get(arm, arm):>13}" for arm in arms))
    table = {arm: dsc_of(results, "B", arm, "last", shifted, seeds_of(results, "B", arm)).mean((0, 1)) for arm in arms}
    for o in small_first(names):
        name = names[o]
        lines.append(f"{name:<22}{voxels[o]:>8.0f}" + "".join(f"{table[a][o]:>13.4f}" for a in arms))
    lines.append(f"{'mean':<22}{'':>8}" + "".join(f"{table[a].mean():>13.4f}" for a in arms))
    figures["organ_dsc_shifted"] = {arm: table[arm].tolist() for arm in arms}

    figures["differences"] = {}
    versus = [*((arm, other) for arm in VERSUS_PRIMARY for other in (PRIMARY, "single_continue")), *VERSUS_MORE]
    shared = np.random.default_rng(0)  # the arm-control intervals draw in turn, as when they were published
    for checkpoint in ("last", "best"):
        lines.append(f"\n{checkpoint}.pt minus control, per case mean over common seeds; mean [bootstrap 95 %]")
        for arm, control in [*CONTROLS.items(), *versus]:
            common = paired(results, arm, control)
            if not common:
                continue
            cells = []
            for subset, ids in subsets.items():
                per_case = case_gain(results, arm, control, checkpoint, ids, common)
                # a comparison added later draws from its own generator, so that no published interval moves
                rng = shared if (arm, control) in CONTROLS.items() else np.random.default_rng(0)
                low, high = bootstrap_interval(per_case, rng)
                cells.append(f"{subset} {per_case.mean():+.4f} [{low:+.4f}, {high:+.4f}]")
                figures["differences"][f"{arm}-{control}/{checkpoint}/{subset}"] = {
                    "mean": float(per_case.mean()), "ci95": [low, high], "seeds": common,
                }  # fmt: skip
            lines.append(f"  {arm} - {control}: " + "; ".join(cells) + f" (seeds {', '.join(common)})")

    figures["via_control"] = {}
    for arm, other in VIA_CONTROL:
        if (arm, other) in versus and paired(results, arm, other) or via_control(results, arm, other, shifted) is None:
            continue  # compared directly above (they share starts), or not yet comparable
        if not figures["via_control"]:  # the first comparison: its header
            lines.append(f"\nAcross starts, through {CONTROL} (each arm minus the control from its own starts), "
                         "last.pt; mean [bootstrap 95 %]")  # fmt: skip
        cells = []
        for subset, ids in subsets.items():
            per_case = via_control(results, arm, other, ids)
            low, high = bootstrap_interval(per_case, np.random.default_rng(0))
            cells.append(f"{subset} {per_case.mean():+.4f} [{low:+.4f}, {high:+.4f}]")
            figures["via_control"][f"{arm}-{other}/{subset}"] = {"mean": float(per_case.mean()), "ci95": [low, high]}
        units = f"{arm} seeds {', '.join(paired(results, arm, CONTROL))}; {other} seeds " + ", ".join(
            paired(results, other, CONTROL)
        )
        lines.append(f"  {arm} - {other}: " + "; ".join(cells) + f" ({units})")
        if (arm, other) == (PRIMARY, "pair_equal_time"):
            seeds = {seed_of(u) for u in paired(results, other, CONTROL)}
            sentence = equal_time_sentence(figures["via_control"][f"{arm}-{other}/shifted"], len(seeds),
                                           len(settings.seeds))  # fmt: skip
            figures["equal_time_verdict"] = sentence
            lines.append(f"  EQUAL WALL TIME: {sentence}")

    for arm in JUDGED:
        late = arm != PRIMARY and setting != SHIFT  # setting 1's verdict is the primary arm's
        lines += judge(results, arm, shifted, voxels, names, summary, settings, figures, late)

    scored = sorted((r for r in results if r["phase"] == "B" and r.get("pseudo")), key=lambda r: (r["seed"], unit(r)))
    if scored:
        lines.append("\nPseudo-label DSC on the unlabeled pool (a pair: its ensemble; A&D: D_ξ + D_ψ, and D_θ apart), "
                     "mean over cases: mean; per organ")  # fmt: skip
        for row in scored:
            for name, cases in row["pseudo"].items():
                organs = np.array(list(cases.values())).mean(0)
                lines.append(f"  s{unit(row)} {name:<14} {organs.mean():.4f}; "
                             + ", ".join(f"{n[:8]} {v:.3f}" for n, v in zip(names, organs)))  # fmt: skip
            if "uif_kept" in row:
                half = row["pseudo"]["cps_uif@half"]
                kept = [np.mean(v) for c, v in half.items() if c in row["uif_kept"]]
                dropped = [np.mean(v) for c, v in half.items() if c not in row["uif_kept"]]
                lines.append(f"  s{unit(row)} UIF: pseudo-label DSC of kept cases {np.mean(kept):.4f} "
                             f"({len(kept)}), dropped {np.mean(dropped):.4f} ({len(dropped)})")  # fmt: skip
    return "\n".join(lines), figures


def via_control(
    results: list[dict], arm: str, other: str, ids: list[str], checkpoint: str = "last"
) -> np.ndarray | None:
    """Per test case of ``ids``: ``arm`` − ``pair_continue`` averaged over the runs ``arm`` shares a start
    with the control, minus the same of ``other``: two arms that share no start compared through the
    control each ran beside. None while either has no control from its starts."""
    mine, theirs = paired(results, arm, CONTROL), paired(results, other, CONTROL)
    if not mine or not theirs:
        return None

    return case_gain(results, arm, CONTROL, checkpoint, ids, mine) - case_gain(
        results, other, CONTROL, checkpoint, ids, theirs
    )


def case_gain(results: list[dict], arm: str, control: str, checkpoint: str, ids: list[str], units) -> np.ndarray:
    """Per test case of ``ids``: ``arm`` − ``control`` (mean DSC over the organs), averaged over ``units``."""
    diff = dsc_of(results, "B", arm, checkpoint, ids, units) - dsc_of(results, "B", control, checkpoint, ids, units)
    return diff.mean(2).mean(0)


def equal_time_sentence(difference: dict[str, Any], seeds: int, planned: int) -> str:
    """The pre-registered reading of ``cacps`` − ``pair_equal_time`` (shifted cases, ``last.pt``)."""
    low, high = difference["ci95"]
    figure = f"cacps - pair_equal_time {difference['mean']:+.4f} [{low:+.4f}, {high:+.4f}]"
    if low > 0:
        reading = "cacps keeps its gain at equal wall time"
    elif high < 0:
        reading = "the labels-only pair trained as long in wall time is better than cacps"
    else:
        reading = "at equal wall time cacps and the labels-only pair cannot be told apart"
    done = "" if seeds >= planned else f"not yet decided ({seeds} of {planned} seeds); so far: "
    return f"{done}{reading}: {figure}"


def judge(
    results: list[dict], arm: str, shifted: list[str], voxels: np.ndarray, names: list[str],
    summary: dict[str, Any] | None, settings: Settings, figures: dict[str, Any], late: bool = False,
) -> list[str]:  # fmt: skip
    """The lines on ``arm`` against the control on the shifted cases: per organ, per seed, the worst
    organ and (with phase A) its verdict sentence, also kept in ``figures``; none before a paired run.
    ``late``: an arm added after the setting's verdict, judged by the same criterion, said so."""
    common = paired(results, arm, CONTROL)
    if not common:
        return []
    diff = dsc_of(results, "B", arm, "last", shifted, common) - dsc_of(results, "B", CONTROL, "last", shifted, common)
    per_organ, per_seed = diff.mean((0, 1)), diff.mean((1, 2))
    large = voxels >= ORGAN_MIN_VOXELS
    worst = float(per_organ[large].min()) if large.any() else 0.0
    gain = figures["differences"][f"{arm}-{CONTROL}/last/shifted"]
    lines = [
        f"\n{arm} - {CONTROL} per organ, shifted, last.pt (seeds {', '.join(common)}): "
        + ", ".join(f"{names[o]} {per_organ[o]:+.4f}" for o in small_first(names)),
        "  per seed: " + ", ".join(f"s{s} {v:+.4f}" for s, v in zip(common, per_seed)),
        f"  worst organ of >= {ORGAN_MIN_VOXELS} voxels: {worst:+.4f}",
    ]
    key = "primary" if arm == PRIMARY else arm
    figures[f"{key}_per_organ"] = dict(zip(names, per_organ.tolist()))
    figures[f"{key}_per_seed"] = dict(zip(common, per_seed.tolist()))
    if summary is not None:
        complete = {seed_of(u) for u in common} >= {str(seed) for seed in settings.seeds}  # seeds, any start
        sentence = verdict(gain["mean"], tuple(gain["ci95"]), summary["headroom_shifted"], worst, summary["valid"], arm)
        if not complete:
            sentence = f"not yet decided ({len(common)} of {len(settings.seeds)} seeds); so far: {sentence}"
        label = f"{arm}, by the same criterion, added after the verdict" if late else arm
        lines.append(f"\nVERDICT ({label}): {sentence}")
        figures["verdict" if arm == PRIMARY else f"{arm}_verdict"] = sentence
    return lines


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(prog="experiments.ssl_verdict", description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="folder for data, stores, runs and results (default: a new temp dir)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    parser.add_argument("--report", action="store_true", help="only the report of what has finished")
    parser.add_argument(
        "--setting",
        choices=("mixed", SHIFT),
        default="mixed",
        help="mixed: setting 1 (unlabeled and test cases in any domain); shift: setting 2 "
        "(experiments/ssl_shift_design.md: unlabeled and shifted test cases in another contrast phase; "
        f"results in {SHIFT_RESULTS.relative_to(REPO_ROOT)})",
    )
    parser.add_argument("--phase-a-only", action="store_true", help="stop after phase A")
    parser.add_argument(
        "--arms",
        type=arm_names,
        help="phase B: only these arms (comma-separated), seed by seed, with the start runs they need and, "
        "from a remade start, its control; e.g. the arms that need no start checkpoint",
    )
    parser.add_argument(
        "--seeds",
        type=seed_numbers,
        help="phase B: only these seeds (comma-separated), e.g. to run two processes side by side on "
        "different seeds without both training the same start",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        help="runs at a time (default: the settings' 2); not part of the design, so not of the results' key: "
        "a second process beside a running one, on a core it leaves idle",
    )
    parser.add_argument(
        "--results",
        type=Path,
        help=f"results file (default: {RESULTS.relative_to(REPO_ROOT)}, or the setting's; --quick: WORK/results.jsonl)",
    )
    args = parser.parse_args(argv)
    settings = Settings(**QUICK) if args.quick else Settings()
    if args.parallel is not None and args.parallel < 1:
        parser.error(f"--parallel must be at least 1 (got {args.parallel})")
    if args.arms and set(args.arms) - set(report_order(args.setting)):
        others = ", ".join(sorted(set(args.arms) - set(report_order(args.setting))))
        parser.error(f"--arms {others}: not an arm of setting {args.setting} (its arms: "
                     f"{', '.join(report_order(args.setting))})")  # fmt: skip
    if args.seeds and set(args.seeds) - set(settings.seeds):
        others = ", ".join(str(seed) for seed in sorted(set(args.seeds) - set(settings.seeds)))
        parser.error(f"--seeds {others}: not a seed of the design (its seeds: "
                     f"{', '.join(str(seed) for seed in settings.seeds)})")  # fmt: skip
    return args, settings


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_args(argv)
    torch.set_num_threads(settings.threads)
    work = (args.work or Path(tempfile.mkdtemp(prefix="ssl_verdict_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    shift = args.setting == SHIFT
    results_file = args.results or (None if args.quick else SHIFT_RESULTS if shift else RESULTS)
    paths = paths_of(work, settings, results_file, args.setting)
    settings_key = json.dumps({**asdict(settings), **({"setting": SHIFT} if shift else {})}, sort_keys=True)
    print(f"ssl_verdict: {work}; setting {args.setting}; {settings}; load average {os.getloadavg()}, "
          f"{os.cpu_count()} CPUs", flush=True)  # fmt: skip
    started = time.perf_counter()
    if not args.report:
        prepare_data(paths, settings)
    subsets = test_subsets(paths)
    voxels = organ_voxels(paths, subsets["shifted"])
    results = read_results(paths.results, settings_key)
    run_root = work / ("runs_shift" if shift else "runs")

    parallel = args.parallel or settings.parallel
    if not args.report:
        run_jobs(to_run(phase_a_jobs(paths, settings, run_root), results), parallel, paths, results, settings_key)
        summary = phase_a_summary(results, subsets, settings)
        if summary and not args.phase_a_only:
            print(f"ssl_verdict: phase A: S1 {summary['s1']}, S2 {summary['s2']}, headroom "
                  f"{summary['headroom_shifted']:+.4f}, valid {summary['valid']}", flush=True)  # fmt: skip
            jobs = phase_b_jobs(paths, settings, run_root, summary["s1"])
            order = to_run(jobs, results)
            picked = only_arms(order, args.arms, args.seeds) if args.arms or args.seeds else order
            run_jobs(picked, parallel, paths, results, settings_key,
                     jobs)  # fmt: skip
    text, figures = report(results, subsets, voxels, settings, args.setting)
    print("\n" + text)
    name = "report_shift" if shift else "report"
    (work / f"{name}.txt").write_text(text + "\n")
    (work / f"{name}.json").write_text(json.dumps(figures, indent=1))
    print(f"\nssl_verdict: {time.perf_counter() - started:.0f} s; report in {work / f'{name}.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
