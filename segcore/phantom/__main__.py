"""Command line: write a FLARE22-layout data root of synthetic abdominal CT phantoms.

Example::

    python -m segcore.phantom --out dataset --labeled 8 --unlabeled 16 --val 4 --size small --seed 0
    python -m segcore.phantom --out shifted --labeled 0 --unlabeled 0 --val 10 --phase arterial --noise-sigma 35
    python -m segcore.phantom --out mixed --labeled 20 --unlabeled 0 --val 0 --detailed-anatomy 0.5
    python -m segcore.phantom --out clinic --labeled 20 --unlabeled 0 --val 0 --clinical-anatomy 0.5
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import numpy as np

from segcore.phantom.dataset import write_dataset
from segcore.phantom.scanner import SIZES
from segcore.phantom.tissues import PHASES, PhantomDomain


def _share(text: str) -> float:
    """``--detailed-anatomy SHARE``, ``--clinical-anatomy SHARE``: a number in [0, 1]."""
    try:
        share = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"a share lies in [0, 1] (got {text})")
    return share


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m segcore.phantom", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="data root to write (FLARE22 layout)")
    parser.add_argument("--labeled", type=int, default=8, help="cases in train_images + train_mask")
    parser.add_argument("--unlabeled", type=int, default=16, help="cases in trainu_images")
    parser.add_argument("--val", type=int, default=4, help="cases in val_images + val_mask")
    parser.add_argument(
        "--size",
        choices=SIZES,
        default="small",
        help="small (tests), medium (128-160 in-plane, CPU training) or full (512x512 in-plane)",
    )
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--phase", choices=PHASES, help="force this contrast phase on every case")
    parser.add_argument("--noise-sigma", type=float, help="force this noise level (HU) on every case")
    parser.add_argument("--hu-offset", type=float, help="force this HU offset on every case")
    parser.add_argument(
        "--randomise-domains", action="store_true",
        help="training cases get domain-randomised imaging (random tissue values, bias field, thick slices, "
        "noise up to 60 HU); validation cases stay realistic",
    )  # fmt: skip
    parser.add_argument(
        "--vary-anatomy", action="store_true",
        help="training cases get anatomy and field-of-view variation (organs moved, resized, deformed, some "
        "removed; slabs and narrow fields); validation cases stay realistic",
    )  # fmt: skip
    parser.add_argument(
        "--detailed-anatomy", nargs="?", type=_share, const=1.0, default=0.0, metavar="SHARE",
        help="training cases get the detailed anatomy (habitus, aorta and IVC on the spine, crura, adrenals "
        "against their neighbours, iliac vessels, calcified aortas, collapsed loops, mottled faeces): all of "
        "them, or SHARE of them (0-1, each case drawn on its own); validation cases stay realistic",
    )  # fmt: skip
    parser.add_argument(
        "--clinical-anatomy", nargs="?", type=_share, const=1.0, default=0.0, metavar="SHARE",
        help="training cases get what patients have and the average anatomy lacks: liver cysts, metastases and "
        "haemangiomas, renal and splenic cysts (all labelled as their organ), the gallbladder contracted to "
        "distended with stones, the stomach collapsed with rugal folds to distended with food, the IVC's blood by "
        "contrast phase and the caudate lobe around it: all of them, or SHARE of them (0-1, each case drawn on "
        "its own); validation cases stay realistic",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _forced_domain(args: argparse.Namespace) -> PhantomDomain | None:
    """A fixed domain when any domain option is given (the others keep their defaults)."""
    if args.phase is None and args.noise_sigma is None and args.hu_offset is None:
        return None
    defaults = PhantomDomain()
    return PhantomDomain(
        phase=args.phase or defaults.phase,
        noise_sigma_hu=defaults.noise_sigma_hu if args.noise_sigma is None else args.noise_sigma,
        hu_offset=defaults.hu_offset if args.hu_offset is None else args.hu_offset,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if min(args.labeled, args.unlabeled, args.val) < 0:
        print("error: case counts must not be negative", file=sys.stderr)
        return 2
    started = time.perf_counter()
    records = write_dataset(
        args.out, args.labeled, args.unlabeled, args.val, args.size, args.seed,
        workers=args.workers, domain=_forced_domain(args), randomise=args.randomise_domains,
        vary=args.vary_anatomy, detailed=args.detailed_anatomy, clinical=args.clinical_anatomy,
        progress=not args.no_progress,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    splits = Counter(record["split"] for record in records)
    phases = Counter(record["domain"]["phase"] for record in records)
    shapes = np.array([record["size_xyz"] for record in records]) if records else np.zeros((0, 3))
    print(f"wrote {len(records)} cases to {args.out} in {elapsed:.1f} s "
          f"({', '.join(f'{splits[name]} {name}' for name in ('labeled', 'unlabeled', 'val'))})")  # fmt: skip
    if records:
        cut = sum(not record["full_field"] for record in records)
        detailed = sum("detailed" in record for record in records)
        clinical = sum("clinical" in record for record in records)
        print(
            f"  size {args.size}: x {shapes[:, 0].min()}-{shapes[:, 0].max()}, y {shapes[:, 1].min()}-"
            f"{shapes[:, 1].max()}, z {shapes[:, 2].min()}-{shapes[:, 2].max()} voxels; {cut} with a cut field of "
            f"view; {detailed} with the detailed anatomy, {clinical} with the clinical one"
        )
        print("  phases: " + ", ".join(f"{phase} {count}" for phase, count in sorted(phases.items())))
        print(f"  mean time per case: generate {np.mean([r['generate_s'] for r in records]):.2f} s, "
              f"write {np.mean([r['write_s'] for r in records]):.2f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
