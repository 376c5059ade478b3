"""The command line shared by the stage entries (``python -m coarse_seg.train``, ``fine_seg.train``).

With ``semi.enabled`` and ``semi.rounds`` = R > 1 one command runs the whole schedule: round 0
trains CPS on every unlabeled case; after each round, UIF scores the unlabeled cases with that
round's two nets and stores the most certain ``semi.uif_keep`` as a selection; the next round
trains on that selection, from a fresh initialisation (``semi.round_init: fresh``), from the
previous round's nets (``previous``: a new optimiser and learning-rate cycle), or as the
continuation of one run (``continue``: the run's steps are split between the rounds, and each
round goes on with the previous one's nets, optimisers, schedule and step, so the rounds have
one learning-rate shape, as a single run has). Round ``r`` lives in ``output_dir/round<r>/`` (with
``uif.csv``: the scores that chose round r+1's cases), and the last round's ``best.pt`` is
copied to ``output_dir/best.pt``. ``--resume`` skips finished rounds and continues the
unfinished one. Selections are named ``uif_<stage>_fold<f>_round<r>_<run>``, ``<run>`` a hash of
the resolved output dir and the config, so runs sharing a store never overwrite each other's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import yaml

from segcore.config import config_hash
from segcore.networks import build_network
from segcore.runtime import distributed
from segcore.runtime.files import replace_atomically
from segcore.store import CaseStore
from segcore.training.config import StageConfig, load_stage_config
from segcore.training.engine import Stage, Trainer
from segcore.training.uif import load_domains, run_uif
from segcore.training.warm_start import warm_start


def round_configs(config: StageConfig, stage: Stage) -> list[StageConfig]:
    """One config per training round (a single one without UIF rounds)."""
    semi = config.semi
    if not semi.enabled or semi.rounds <= 1:
        return [config]
    base, rounds = Path(config.output_dir), []
    run_key = config_hash({"output_dir": str(base.resolve()), "config": config.as_dict()})[:8]
    for r in range(semi.rounds):
        round_semi = semi
        if r > 0:
            round_semi = replace(round_semi, unlabeled_split=f"uif_{stage.name}_fold{config.fold}_round{r}_{run_key}")
            if semi.round_init == "previous":
                round_semi = replace(round_semi, init_from=str(base / f"round{r - 1}" / "last.pt"))
        rounds.append(replace(config, output_dir=str(base / f"round{r}"), semi=round_semi))
    return rounds


def train_round(
    config: StageConfig, stage: Stage, context, resume: bool, stop_share: float = 1.0, continues: Path | None = None
) -> float:
    """Train one round; ``continues``: the previous round's ``last.pt`` this one goes on from
    (unless it has its own to resume); ``stop_share``: the share of the run's steps it ends at."""
    output_dir = Path(config.output_dir)
    trainer = Trainer(config, stage, context, stop_share)
    if resume and (output_dir / "last.pt").exists():
        trainer.resume()
    elif continues is not None:
        trainer.resume(continues)
    if context.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(config.as_dict(), sort_keys=False))
        print(
            f"{stage.name}_seg: {context.world_size} process(es) on {context.device.type}, "
            f"{trainer.steps_per_epoch} steps/epoch, starting at step {trainer.step} -> {output_dir}"
        )
    trainer.fit()
    trainer.close()
    if context.is_main:
        print(f"{stage.name}_seg: done at step {trainer.step}; best validation Dice {trainer.best_dice:.4f}")
    return trainer.best_dice


def preflight(config: StageConfig, rounds: list[StageConfig], resume: bool, stage: str) -> str | None:
    """What can be checked before any process starts: the store and its fold, the files the
    config names (a ``train.init_weights`` model must fit the stage's nets), and ``--resume``
    against the run folder. Returns the problem, or None."""
    first = Path(rounds[0].output_dir) / "last.pt"
    if first.exists() and not resume:
        return f"{first} already exists: pass --resume to continue that run, or choose another output_dir"
    if resume and not first.exists():
        return f"--resume: {first} does not exist"
    for name, path in (("semi.init_from", config.semi.init_from), ("semi.uif_domains", config.semi.uif_domains)):
        if config.semi.enabled and path and not Path(path).is_file():
            return f"{name}: {path} does not exist"
    for name in ("init_encoder", "init_weights"):
        path = getattr(config.train, name)
        if path and not Path(path).is_file():
            return f"train.{name}: {path} does not exist"
    if config.train.init_weights:
        count = config.semi.networks if config.semi.enabled else 1
        nets = [build_network(config.network.arch, **config.network.init_args) for _ in range(count)]
        try:
            warm_start(nets, config.train.init_weights, stage)
        except ValueError as error:
            return f"train.init_weights: {error}"
    try:
        store = CaseStore(config.store)
        train_ids, _ = store.fold(config.fold)
        store.close()
    except (FileNotFoundError, ValueError, KeyError) as error:
        return str(error)
    if not train_ids:
        return f"{config.store}: fold {config.fold} leaves no training cases"
    return None


def main(stage: Stage, default_config: Path, argv: list[str] | None = None) -> int:
    """Parse ``--config``, ``--resume``, ``--device`` and ``key=value`` overrides, check, then train.

    ``--preflight`` only checks (``run.sh`` does it once before ``torchrun`` starts the processes,
    so a bad store or config is one line, not a line per process among torchrun's tracebacks).
    ``--print-config`` prints the resolved config (YAML, every default filled in) and exits.
    """
    parser = argparse.ArgumentParser(prog=f"{stage.name}_seg.train", description=f"Train the {stage.name} network.")
    parser.add_argument("--config", type=Path, default=default_config, help="YAML config (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue from output_dir's last.pt")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--preflight", action="store_true", help="check config, store and run folder, then exit")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config (YAML, defaults included), then exit"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. train.epochs=10)")
    args = parser.parse_args(argv)
    try:
        config = load_stage_config(args.config, args.overrides)
        rounds = round_configs(config, stage)
    except (OSError, ValueError, TypeError) as error:
        print(f"{stage.name}_seg: bad config: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(config.as_dict(), sort_keys=False), end="")
        return 0
    problem = preflight(config, rounds, args.resume, stage.name)
    if problem:
        print(f"{stage.name}_seg: {problem}", file=sys.stderr)
        return 2
    if args.preflight:
        return 0

    context = distributed.setup(args.device)
    try:
        for r, round_config in enumerate(rounds):
            output_dir = Path(round_config.output_dir)
            continued = config.semi.round_init == "continue"
            train_round(
                round_config, stage, context, args.resume,  # a finished round resumes to a no-op
                stop_share=(r + 1) / len(rounds) if continued else 1.0,
                continues=Path(rounds[r - 1].output_dir) / "last.pt" if continued and r > 0 else None,
            )  # fmt: skip
            if r + 1 < len(rounds) and not (Path(rounds[r + 1].output_dir) / "last.pt").exists():
                selection = rounds[r + 1].semi.unlabeled_split
                semi = config.semi
                kept = run_uif(
                    output_dir / "last.pt", Path(config.store), semi.uif_keep, selection,
                    output_dir / "uif.csv", context, domains=load_domains(semi.uif_domains),
                )  # fmt: skip
                if context.is_main:
                    print(f"{stage.name}_seg: UIF kept {len(kept)} unlabeled cases as {selection!r} for round {r + 1}")
        last_best = Path(rounds[-1].output_dir) / "best.pt"
        if len(rounds) > 1 and context.is_main and last_best.exists():
            replace_atomically(Path(config.output_dir) / "best.pt", lambda copy: shutil.copyfile(last_best, copy))
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"{stage.name}_seg: {error}", file=sys.stderr)
        return 1
    finally:
        distributed.cleanup()
    return 0
