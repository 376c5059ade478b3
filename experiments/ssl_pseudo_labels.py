"""How good are the pseudo-labels? Checkpoints of a ``experiments.ssl_gain`` work folder scored on its
unlabeled cases, whose true labels the phantom generator kept aside in ``trainu_mask/``.

Run from the repository root after (or during) ``experiments.ssl_gain``::

    .venv/bin/python -m experiments.ssl_pseudo_labels --work runs/ssl_gain

For every finished seed, it scores on the unlabeled pool, per organ and per imaging-domain group:
``supervised_pair`` ``last.pt`` (what a teacher knows without unlabeled data), ``cps_uif``
``round0/last.pt`` (plain CPS half-way, 750 steps, and the checkpoint UIF ranks with), ``cps``
and ``cacps`` ``last.pt`` (1500 steps). A net's prediction on an unlabeled case is the
pseudo-label it gives the other net (the argmax of its softmax; the table shows each
checkpoint's two-net ensemble and its net 0). Also: the DSC of the cases UIF kept against the
ones it dropped. Figures are printed and written to ``WORK/pseudo_labels.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

from experiments.ssl_gain import predict_coarse, to_original_grid

CHECKPOINTS = {
    "supervised_pair@1500": "supervised_pair/last.pt",
    "cps@750": "cps_uif/round0/last.pt",
    "cps@1500": "cps/last.pt",
    "cacps@1500": "cacps/last.pt",
}


def score_unlabeled(checkpoint: Path, store_path: Path, data_root: Path, nets_to_use: str) -> dict[str, list[float]]:
    """Per unlabeled case, DSC of the 13 organs of one checkpoint's prediction: ``ensemble`` (its nets'
    mean softmax), ``net0``, or ``pseudo_label``: for an A&D checkpoint (``semi.method: ad_generic``) the
    pseudo-label its D_θ learns from (:func:`segcore.training.generic_ssl.pseudo_labels`, its
    ``semi.ddim_steps``, the noise seeded per case), not what it predicts."""
    from segcore.evaluate.metrics import score_case
    from segcore.labels import ORGANS
    from segcore.networks.checkpoint import build_networks, load_checkpoint
    from segcore.phantom.dataset import UNLABELED_MASK_DIR
    from segcore.store import CaseStore
    from segcore.volumes import read_label_map

    payload = load_checkpoint(checkpoint)
    networks = [net.eval() for net in build_networks(payload)]
    window = tuple(payload["inference"]["hu_window"])
    if nets_to_use == "pseudo_label":
        method = payload["config"]["semi"].get("method", "cps")
        if method != "ad_generic":
            raise ValueError(
                f"{checkpoint}: pseudo_label scores an A&D checkpoint (semi.method ad_generic), not {method}"
            )
        ddim_steps = payload["config"]["semi"]["ddim_steps"]

        def label_map(image_hu: np.ndarray) -> np.ndarray:
            return ad_pseudo_label(networks[0], image_hu, window, ddim_steps)
    else:
        nets = networks if nets_to_use == "ensemble" else networks[:1]

        def label_map(image_hu: np.ndarray) -> np.ndarray:
            return predict_coarse(nets, image_hu, window)

    store = CaseStore(store_path)
    scores = {}
    for case_id in store.ids("unlabeled"):
        meta = store.meta(case_id)
        prediction = to_original_grid(label_map(store.arrays(case_id)["coarse_image"]), meta)
        truth, geometry = read_label_map(data_root / UNLABELED_MASK_DIR / f"{case_id}.nii.gz")
        organ_scores = score_case(truth, prediction, geometry.spacing_zyx)
        scores[case_id] = [organ_scores[o].dsc for o in ORGANS]
    store.close()
    return scores


def load_checkpoint_config(checkpoint: Path) -> dict:
    """The training config a checkpoint was made with."""
    from segcore.networks.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)["config"]


def ad_pseudo_label(net: torch.nn.Module, image_hu: np.ndarray, hu_window: tuple[float, float], ddim_steps: int,
                    seed: int = 0) -> np.ndarray:  # fmt: skip
    """A&D's pseudo-label ``(z, y, x)`` uint8 of a stored coarse image; its DDIM and Gumbel noise seeded by ``seed``."""
    from segcore.training.generic_ssl import LabelDiffusion, pseudo_labels
    from segcore.volumes.intensity import normalize_hu

    tensor = normalize_hu(torch.from_numpy(np.array(image_hu, dtype=np.float32))[None, None], hu_window)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the Gumbel noise draws from the global generator, as in training
        labels = pseudo_labels(net, tensor, LabelDiffusion(), ddim_steps, torch.Generator().manual_seed(seed))
    return labels[0].to(torch.uint8).numpy()


def keep_figures(path: Path, figures: dict[str, dict]) -> None:
    """Add ``figures`` to those ``path`` already holds (a checkpoint scored again replaces its old
    figures), so that scoring one more checkpoint keeps the others'."""
    kept = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**kept, **figures}, indent=1))


def main(argv: list[str] | None = None) -> int:
    from segcore.labels import ORGANS
    from segcore.phantom.tissues import domain_group

    parser = argparse.ArgumentParser(prog="experiments.ssl_pseudo_labels", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work", type=Path, required=True, help="the experiments.ssl_gain (or ssl_verdict) work folder"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        help="score these checkpoints (relative to --work, repeatable) instead of the ssl_gain runs: the ensemble's "
        "prediction, and for an A&D checkpoint also its pseudo-label",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = args.work.resolve()
    (manifest,) = [p for p in work.glob("cases_*.json")]
    data_key = manifest.stem.removeprefix("cases_")
    data_root = work / f"data_{data_key}"
    (store,) = [p for p in work.glob(f"store_{data_key}_*.lmdb") if "all_labeled" not in p.name]
    groups = {r["id"]: domain_group(r["domain"]) for r in json.loads(manifest.read_text())}
    names = list(ORGANS.values())
    figures: dict[str, dict] = {}

    def summarise(key: str, scores: dict[str, list[float]]) -> None:
        per_organ = np.mean(list(scores.values()), axis=0)
        by_group: dict[str, list[float]] = {}
        for case_id, values in scores.items():
            by_group.setdefault(groups[case_id], []).append(float(np.mean(values)))
        figures[key] = {
            "mean_dsc": float(per_organ.mean()),
            "per_organ": dict(zip(names, per_organ.round(4).tolist())),
            "per_group": {g: round(float(np.mean(v)), 4) for g, v in sorted(by_group.items())},
            "per_case": {c: round(float(np.mean(v)), 4) for c, v in scores.items()},
        }
        print(f"{key}: mean DSC {per_organ.mean():.4f}; " + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, per_organ)))
        print("    per domain group: " + ", ".join(f"{g} {v}" for g, v in figures[key]["per_group"].items()))

    if args.checkpoint:
        for relative in args.checkpoint:
            path = work / relative
            ad = load_checkpoint_config(path)["semi"].get("method") == "ad_generic"
            for mode in ("ensemble", "pseudo_label") if ad else ("ensemble",):
                summarise(f"{relative}/{mode}", score_unlabeled(path, store, data_root, mode))
        keep_figures(work / "pseudo_labels_checkpoints.json", figures)
        return 0
    for seed_dir in sorted(work.glob("runs/*/seed*")):
        for label, relative in CHECKPOINTS.items():
            path = seed_dir / relative
            if not path.exists():
                continue
            for nets in ("ensemble", "net0"):
                summarise(f"{seed_dir.name}/{label}/{nets}", score_unlabeled(path, store, data_root, nets))
        uif = seed_dir / "cps_uif" / "round0" / "uif.csv"
        half = figures.get(f"{seed_dir.name}/cps@750/ensemble")
        if uif.exists() and half:
            rows = list(csv.DictReader(io.StringIO(uif.read_text())))
            kept = [half["per_case"][r["case_id"]] for r in rows if r["selected"] == "1"]
            dropped = [half["per_case"][r["case_id"]] for r in rows if r["selected"] != "1"]
            correlation = float(np.corrcoef([float(r["uncertainty"]) for r in rows],
                                            [half["per_case"][r["case_id"]] for r in rows])[0, 1])  # fmt: skip
            line = (f"{seed_dir.name} UIF: pseudo-label DSC of kept cases {np.mean(kept):.4f} ({len(kept)}), "
                    f"dropped {np.mean(dropped):.4f} ({len(dropped)}); correlation of uncertainty and DSC "
                    f"{correlation:+.3f}")  # fmt: skip
            print(line)
            figures[f"{seed_dir.name}/uif"] = {"kept": float(np.mean(kept)), "dropped": float(np.mean(dropped)),
                                               "correlation": correlation}  # fmt: skip
    (work / "pseudo_labels.json").write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
