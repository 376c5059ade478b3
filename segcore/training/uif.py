"""Uncertainty-based image filtering (UIF): keep the unlabeled cases the two CPS nets are sure of.

Every unlabeled case of the store is run through both networks of a CPS checkpoint (at the
stage's input size, no augmentation). With ``p`` the average of their softmax outputs and
``F`` the voxels whose ``argmax(p)`` is an organ:

* ``entropy``: mean over ``F`` of ``-sum_c p_c log p_c``, divided by ``log 14`` (0..1);
* ``disagreement``: ``1 - `` the mean Dice, over the organs either net predicts, between the
  two nets' argmax maps (0: identical maps, 1: no overlap);
* ``uncertainty = entropy + disagreement``; a case where no organ is predicted gets the
  maximum (2), since nothing can be learned from it.

The ``keep`` most certain cases (lowest uncertainty; ties by case id, so the pick is
reproducible) become a named selection in the store, and every score goes to a CSV::

    python -m segcore.training.uif --checkpoint runs/coarse/round0/last.pt \\
        --store dataset/prepared.lmdb --keep 0.1 --name uif_coarse_round1 --csv uif.csv

The training rounds (``semi.rounds`` > 1) run this between rounds themselves.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segcore import distributed
from segcore.checkpoint import build_networks, load_checkpoint
from segcore.intensity import normalize_hu
from segcore.resample import resize_image
from segcore.store import CaseStore, StoreWriter

FIELDS = ["case_id", "entropy", "disagreement", "uncertainty", "foreground_fraction", "selected"]


def uncertainty_scores(probabilities_a: torch.Tensor, probabilities_b: torch.Tensor) -> dict[str, float]:
    """Scores of one case from the two nets' softmax outputs ``(C, z, y, x)``."""
    mean = (probabilities_a + probabilities_b) / 2
    foreground = mean.argmax(0) > 0
    if not foreground.any():
        return {"entropy": 1.0, "disagreement": 1.0, "uncertainty": 2.0, "foreground_fraction": 0.0}
    entropy_map = -(mean * mean.clamp_min(1e-12).log()).sum(0)
    entropy = float(entropy_map[foreground].mean()) / math.log(mean.shape[0])
    labels_a, labels_b = probabilities_a.argmax(0), probabilities_b.argmax(0)
    dices = []
    for organ in range(1, mean.shape[0]):
        in_a, in_b = labels_a == organ, labels_b == organ
        total = int(in_a.sum() + in_b.sum())
        if total:
            dices.append(2 * int((in_a & in_b).sum()) / total)
    disagreement = 1 - float(np.mean(dices)) if dices else 1.0
    return {
        "entropy": entropy,
        "disagreement": disagreement,
        "uncertainty": entropy + disagreement,
        "foreground_fraction": float(foreground.float().mean()),
    }


@torch.no_grad()
def score_cases(payload: dict[str, Any], store: CaseStore, ids: list[str], device: torch.device) -> list[dict]:
    """Score ``ids`` with the two networks of a CPS checkpoint ``payload``."""
    nets = build_networks(payload, device)
    if len(nets) != 2:
        raise ValueError(f"UIF needs a checkpoint with the 2 CPS networks (last.pt), got {len(nets)}")
    inference = payload["inference"]
    image_key = f"{payload['stage']}_image"
    rows = []
    for case_id in ids:
        image = resize_image(store.arrays(case_id)[image_key], inference["input_size"], device=device)
        tensor = normalize_hu(image[None, None], tuple(inference["hu_window"]))
        a, b = (torch.softmax(net(tensor).float(), dim=1)[0] for net in nets)
        rows.append({"case_id": case_id, **uncertainty_scores(a, b)})
    return rows


def select(rows: list[dict], keep: float) -> list[str]:
    """Ids of the ``keep`` most certain cases: a share of them when ``keep`` < 1, else a count."""
    if keep <= 0:
        raise ValueError(f"keep={keep}: expected a share in (0, 1) or a count >= 1")
    count = max(1, round(keep * len(rows))) if keep < 1 else min(int(keep), len(rows))
    ranked = sorted(rows, key=lambda row: (row["uncertainty"], row["case_id"]))
    return [row["case_id"] for row in ranked[:count]]


def write_scores(rows: list[dict], selected: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    chosen = set(selected)
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=FIELDS)
        writer.writeheader()
        for row in sorted(rows, key=lambda row: (row["uncertainty"], row["case_id"])):
            writer.writerow({**row, "selected": int(row["case_id"] in chosen)})


def run_uif(
    checkpoint: Path,
    store_path: Path,
    keep: float,
    name: str,
    csv_path: Path,
    context: distributed.DistributedContext,
    source_split: str = "unlabeled",
) -> list[str]:
    """Score the ``source_split`` cases (shared over the ranks), store the pick as ``name``.

    Every rank returns the selected ids. Call it with no store reader open (LMDB readers are lock-free).
    """
    payload = load_checkpoint(checkpoint, map_location=context.device)
    store = CaseStore(store_path)
    ids = store.ids(source_split)
    if not ids:
        store.close()
        raise ValueError(f"{store_path}: split {source_split!r} is empty: nothing for UIF to score")
    mine = score_cases(payload, store, ids[context.rank :: context.world_size], context.device)
    store.close()
    rows = [row for part in distributed.gather_objects(mine) for row in part]
    selected = select(rows, keep)
    if context.is_main:
        write_scores(rows, selected, csv_path)
        with StoreWriter(store_path) as writer:
            writer.put_selection(name, selected)
    distributed.barrier()
    return selected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segcore.training.uif", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a CPS checkpoint with both nets (last.pt)")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--keep", type=float, default=0.1, help="share (< 1) or count (>= 1) to keep")
    parser.add_argument("--name", required=True, help="name of the selection written to the store")
    parser.add_argument("--csv", type=Path, help="scores CSV (default: next to the checkpoint, <name>.csv)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    context = distributed.setup(args.device)
    try:
        csv_path = args.csv or args.checkpoint.with_name(f"{args.name}.csv")
        selected = run_uif(args.checkpoint, args.store, args.keep, args.name, csv_path, context)
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"uif: {error}", file=sys.stderr)
        return 1
    finally:
        distributed.cleanup()
    if context.is_main:
        print(f"uif: kept {len(selected)} cases as selection {args.name!r}; scores in {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
