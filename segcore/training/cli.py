"""The command line shared by the stage entries (``python -m coarse_seg.train``, ``fine_seg.train``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from segcore import distributed
from segcore.config import load_config
from segcore.training.engine import Stage, Trainer


def main(stage: Stage, default_config: Path, argv: list[str] | None = None) -> int:
    """Parse ``--config``, ``--resume``, ``--device`` and ``key=value`` overrides, then train."""
    parser = argparse.ArgumentParser(prog=f"{stage.name}_seg.train", description=f"Train the {stage.name} network.")
    parser.add_argument("--config", type=Path, default=default_config, help="YAML config (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue from output_dir/last.pt")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. train.epochs=10)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except (OSError, ValueError) as error:
        print(f"{stage.name}_seg: bad config: {error}", file=sys.stderr)
        return 2

    last = Path(config["output_dir"]) / "last.pt"
    if last.exists() and not args.resume:
        print(
            f"{stage.name}_seg: {last} already exists: pass --resume to continue that run, "
            "or choose another output_dir",
            file=sys.stderr,
        )
        return 2
    if args.resume and not last.exists():
        print(f"{stage.name}_seg: --resume: {last} does not exist", file=sys.stderr)
        return 2

    context = distributed.setup(args.device)
    try:
        trainer = Trainer(config, stage, context)
        if args.resume:
            trainer.resume()
        if context.is_main:
            Path(config["output_dir"]).mkdir(parents=True, exist_ok=True)
            (Path(config["output_dir"]) / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            print(
                f"{stage.name}_seg: {context.world_size} process(es) on {context.device.type}, "
                f"{trainer.steps_per_epoch} steps/epoch, starting at step {trainer.step}"
            )
        trainer.fit()
        trainer.close()
        if context.is_main:
            print(f"{stage.name}_seg: done at step {trainer.step}; best validation Dice {trainer.best_dice:.4f}")
    finally:
        distributed.cleanup()
    return 0
