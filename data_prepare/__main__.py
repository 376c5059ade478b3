"""Prepare a FLARE22-layout data root into the LMDB case store.

    sh data_prepare/run.sh [--config data_prepare/config.yaml] [--data-root DIR] [--out DIR]
                           [--workers N] [--coarse-weights FILE] [--force] [--print-config] [key=value ...]

``--coarse-weights`` (a coarse checkpoint, e.g. ``model_weights/coarse.pt``): cases without
labels take their fine crop from the coarse model's prediction, as inference does.
The config's keys are :class:`~data_prepare.prepare.PrepareConfig`'s; a file may name a ``base``
and hold only what differs from it (:mod:`segcore.config`). ``--print-config`` prints the
resolved settings (YAML, options and overrides applied) and exits.

Exit status 0 when every case is stored (or already was), 1 when any case failed,
130 when interrupted (what was stored stays stored; run again to finish).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import yaml

from data_prepare.prepare import PrepareConfig, run, worker_count
from segcore.config import load_config

DEFAULT_CONFIG = Path(__file__).with_name("config.yaml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="data_prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config (default: %(default)s)")
    parser.add_argument("--data-root", help="FLARE22-layout folder (overrides data_root)")
    parser.add_argument("--out", help="store folder (overrides out)")
    parser.add_argument("--workers", type=int, help="worker processes (overrides workers; 0 = one per core)")
    parser.add_argument(
        "--coarse-weights", help="coarse checkpoint that crops cases without labels (overrides coarse_weights)"
    )
    parser.add_argument("--force", action="store_true", help="redo cases already stored with the same config")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings (YAML), then exit")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        values = load_config(args.config, args.overrides, schema=PrepareConfig)
        config = PrepareConfig(**values)
    except (OSError, ValueError, TypeError) as error:
        print(f"data_prepare: bad config: {error}", file=sys.stderr)
        return 2
    for name, value in (
        ("data_root", args.data_root),
        ("out", args.out),
        ("workers", args.workers),
        ("coarse_weights", args.coarse_weights),
    ):
        if value is not None:
            setattr(config, name, value)
    if args.print_config:
        print(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False), end="")
        return 0
    config.workers = worker_count(config.workers)
    if not Path(config.data_root).is_dir():
        print(f"data_prepare: data root {config.data_root} is not a folder", file=sys.stderr)
        return 2
    print(f"data_prepare: {config.data_root} -> {config.out} ({config.workers} workers)")
    print("  " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()))
    try:
        report = run(config, force=args.force, progress=not args.no_progress)
    except ValueError as error:  # a bad coarse checkpoint, refused before any case is prepared
        print(f"data_prepare: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("data_prepare: interrupted; stored cases are kept, run again to finish", file=sys.stderr)
        return 130
    print(report.summary())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
