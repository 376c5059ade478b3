"""Uncertainty-based image filtering (UIF): keep the unlabeled cases the two CPS nets are sure of.

Every unlabeled case of the store is run through both networks of a CPS checkpoint (at the
stage's input size, no augmentation). With ``p_a``, ``p_b`` their softmax outputs and ``p``
their average, both scores are taken over the union of the two nets' foreground, so that
organs one net or both nets half-see count, and a case where both nets miss organs does not
look certain:

* ``entropy``: mean of ``-sum_c p_c log p_c / log 14`` (0..1) over the voxels where either net
  gives the organs together at least ``FOREGROUND_DOUBT`` of its probability (an organ both
  nets miss with doubt is in there; confidently empty background is not);
* ``disagreement``: the share of the voxels that either net labels as an organ where the two
  argmax maps differ (0: identical maps, 1: no voxel agrees);
* ``uncertainty = entropy + disagreement``; a case where no organ is predicted gets the
  maximum (2), since nothing can be learned from it.

Both are voxel-level, so an organ weighs by its size: a small organ found imperfectly no longer
makes a case look as uncertain as a liver the nets disagree on. When the cases' imaging
domains are known (phantoms: ``phantom_cases.json``), ``uif.csv`` has a ``domain`` column and
the pick is summarised per domain.

The ``keep`` most certain cases (lowest uncertainty; ties by case id, so the pick is
reproducible) become a named selection in the store, and every score goes to a CSV::

    python -m segcore.training.uif --checkpoint runs/coarse/round0/last.pt \\
        --store dataset/prepared.lmdb --keep 0.1 --name uif_coarse_round1 --csv uif.csv

The training rounds (``semi.rounds`` > 1) run this between rounds themselves.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from segcore.inference.quality import FOREGROUND_DOUBT, normalised_entropy
from segcore.networks.checkpoint import build_networks, load_checkpoint
from segcore.runtime import distributed
from segcore.store import CaseStore, write_selection
from segcore.volumes.intensity import normalize_hu
from segcore.volumes.resample import resize_image

FIELDS = ["case_id", "domain", "entropy", "disagreement", "uncertainty", "foreground_fraction", "selected"]


def uncertainty_scores(probabilities_a: torch.Tensor, probabilities_b: torch.Tensor) -> dict[str, float]:
    """Scores of one case from the two nets' softmax outputs ``(C, z, y, x)``."""
    labels_a, labels_b = probabilities_a.argmax(0), probabilities_b.argmax(0)
    foreground = (labels_a > 0) | (labels_b > 0)
    if not foreground.any():
        return {"entropy": 1.0, "disagreement": 1.0, "uncertainty": 2.0, "foreground_fraction": 0.0}
    doubtful = (1 - torch.minimum(probabilities_a[0], probabilities_b[0])) >= FOREGROUND_DOUBT
    region = foreground | doubtful
    mean = (probabilities_a + probabilities_b) / 2
    entropy = float(normalised_entropy(mean)[region].mean())
    disagreement = float((labels_a != labels_b)[foreground].float().mean())
    return {
        "entropy": entropy,
        "disagreement": disagreement,
        "uncertainty": entropy + disagreement,
        "foreground_fraction": float(foreground.float().mean()),
    }


def load_domains(path: str | Path | None) -> dict[str, str] | None:
    """Case id -> imaging domain group, from a JSON file (None: no file given): ``{case id: group}``,
    or a list of records with ``id`` and ``domain_group`` (a ``phantom_cases.json``).

    Raises:
        ValueError: the file holds neither, naming it and the first record at fault.
    """
    if path is None:
        return None
    content = json.loads(Path(path).read_text())
    if isinstance(content, dict) and all(isinstance(group, str) for group in content.values()):
        return {str(case_id): group for case_id, group in content.items()}
    if isinstance(content, list):
        for record in content:
            if not (isinstance(record, dict) and "id" in record and isinstance(record.get("domain_group"), str)):
                shown = record.get("id", record) if isinstance(record, dict) else record
                raise ValueError(f"{path}: record {shown!r} has no id and domain_group (make the phantoms again)")
        return {record["id"]: record["domain_group"] for record in content}
    raise ValueError(f"{path}: expected {{case id: domain group}} or a list of records with id and domain_group")


def per_domain_summary(rows: list[dict], selected: list[str]) -> str:
    """``domain: kept/total`` for every domain of ``rows`` (each row has a ``domain``)."""
    chosen = set(selected)
    totals = Counter(row["domain"] for row in rows)
    kept = Counter(row["domain"] for row in rows if row["case_id"] in chosen)
    return ", ".join(f"{domain} {kept[domain]}/{totals[domain]}" for domain in sorted(totals))


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
            writer.writerow({"domain": "", **row, "selected": int(row["case_id"] in chosen)})


def run_uif(
    checkpoint: Path,
    store_path: Path,
    keep: float,
    name: str,
    csv_path: Path,
    context: distributed.DistributedContext,
    source_split: str = "unlabeled",
    domains: dict[str, str] | None = None,
) -> list[str]:
    """Score the ``source_split`` cases (shared over the ranks), store the pick as ``name``.

    ``domains``: case id -> imaging domain, written to the CSV and summarised per domain.
    Every rank returns the selected ids. The pick is a file beside the store, not an LMDB write, so
    other runs reading the store meanwhile are safe.
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
    if domains is not None:
        for row in rows:
            row["domain"] = domains.get(row["case_id"], "unknown")
    if context.is_main:
        write_scores(rows, selected, csv_path)
        if domains is not None:
            print(f"uif: {name}: kept per domain: {per_domain_summary(rows, selected)}")
        write_selection(store_path, name, selected)
    distributed.barrier()
    return selected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segcore.training.uif", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a CPS checkpoint with both nets (last.pt)")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--keep", type=float, default=0.1, help="share (< 1) or count (>= 1) to keep")
    parser.add_argument("--name", required=True, help="name of the selection written to the store")
    parser.add_argument("--csv", type=Path, help="scores CSV (default: next to the checkpoint, <name>.csv)")
    parser.add_argument("--domains", type=Path, help="{case id: group} JSON or phantom_cases.json: the pick per domain")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    context = distributed.setup(args.device)
    try:
        csv_path = args.csv or args.checkpoint.with_name(f"{args.name}.csv")
        selected = run_uif(
            args.checkpoint, args.store, args.keep, args.name, csv_path, context, domains=load_domains(args.domains)
        )
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
