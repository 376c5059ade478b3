"""Can the data pipeline keep a GPU fed? Samples per second of the LMDB store + DataLoader, and the
cost of the on-device augmentation, at production size (160³ coarse, 192³ fine).

Run from the repository root::

    .venv/bin/python -m bench.loader                       # CPU: workers 0 2 4 8, augmentation on the CPU
    .venv/bin/python -m bench.loader --device cuda         # augmentation timed on the GPU

What a training step consumes per process: a batch of 2 labeled samples (+ 2 unlabeled with
semi-supervised training). The DataLoader delivers the stored int16 arrays (the store is read
zero-copy from the memory map, one copy into the batch); everything else (resampling at the
input size, contrast, gamma, blur, noise, the window and z-score, Fourier mixing) runs in the
training process on the training device (:meth:`segcore.training.engine.Trainer.prepare_views`).
So two figures decide whether the GPU waits:

* **loader**: samples/s from ``make_loader`` (the trainer's own) with 0, 2, 4, 8 workers, the
  store prepared from ``--cases`` medium phantoms by ``data_prepare`` at production sizes;
* **augmentation**: seconds per batch of 2 of the trainer's ``prepare_views`` + Fourier mixing,
  on ``--device``.

They are compared with a training step's time on an H100 estimated from the networks' FLOPs
(``bench.networks``: convolutions, forward; a training step is counted as 3x the forward, two
nets for CPS) at a stated sustained rate, ``--gpu-tflops`` (default 20 TFLOP/s: 3-D convolutions
with 16-64 channels are bound by memory bandwidth, far below the H100's ~990 TFLOP/s dense fp16
tensor peak; this is a guess, not a measurement). The GPU figures of ``bench/gpu_check.sh``
replace the estimate where a GPU was measured. Figures are printed, never judged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = {"coarse": ("coarse_image", "coarse_label", "residual_unet3d", 160), "fine": ("fine_image", "fine_label",
          "efficient_context_net", 192)}  # fmt: skip
BATCH = 2


def prepare(work: Path, cases: int) -> Path:
    """Medium phantoms in a store at the production sizes of ``data_prepare/config.yaml`` (reused)."""
    from data_prepare.prepare import PrepareConfig, run
    from segcore.config import load_config
    from segcore.phantom import write_dataset

    data, store = work / "data", work / "store.lmdb"
    if not (data / "phantom_cases.json").exists():
        write_dataset(data, cases, 0, 0, "medium", seed=0, workers=2)
    values = load_config(REPO_ROOT / "data_prepare" / "config.yaml")
    values.update(data_root=str(data), out=str(store), workers=2, folds=2)
    report = run(PrepareConfig(**values))
    if report.failed:
        raise RuntimeError(report.summary())
    return store


def loader_rate(store_path: Path, stage: str, workers: int, batches: int) -> float:
    """Samples per second the trainer's DataLoader delivers (after one warm-up batch)."""
    from segcore.store import CaseStore
    from segcore.training.data import StoreDataset, make_loader

    image_key, label_key, _, _ = STAGES[stage]
    store = CaseStore(store_path)
    dataset = StoreDataset(store, store.ids("labeled"), image_key, label_key)
    loader = make_loader(dataset, BATCH, 0, 1, 0, workers, pin=torch.cuda.is_available())
    delivered, started, epoch = 0, None, 0
    while delivered < batches * BATCH:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            if started is None:  # the first batch pays for starting the workers
                started = time.perf_counter()
                continue
            delivered += batch["image"].shape[0]
            if delivered >= batches * BATCH:
                break
        epoch += 1
    rate = delivered / (time.perf_counter() - started)
    del loader
    store.close()
    return rate


def augmentation_seconds(store_path: Path, stage: str, device: torch.device, repeats: int) -> float:
    """Median seconds of the trainer's batch preparation (both views, Fourier mixing) for 2 samples."""
    import numpy as np

    from segcore.store import CaseStore
    from segcore.training.augment import AugmentConfig, augment_views, random_fourier_mix
    from segcore.volumes.intensity import normalize_hu

    image_key, label_key, _, size = STAGES[stage]
    store = CaseStore(store_path)
    ids = store.ids("labeled")[:BATCH]
    images = torch.stack([torch.from_numpy(np.array(store.arrays(i)[image_key]))[None] for i in ids]).to(device)
    labels = torch.stack([torch.from_numpy(np.array(store.arrays(i)[label_key])) for i in ids]).to(device)
    store.close()
    config, generator, times = AugmentConfig(fourier_probability=1.0, blur_probability=1.0), torch.Generator(), []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        weak, strong, _ = augment_views(images.float(), labels.long(), (size,) * 3, config, generator)
        strong = normalize_hu(strong)
        random_fourier_mix(strong, strong, config, generator)
        normalize_hu(weak)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    from bench.networks import PRODUCTION, count

    parser = argparse.ArgumentParser(prog="bench.loader", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="phantoms and store (default: a temp folder)")
    parser.add_argument("--cases", type=int, default=8, help="medium phantoms in the store")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4, 8])
    parser.add_argument("--batches", type=int, default=20, help="timed batches per setting")
    parser.add_argument("--repeats", type=int, default=3, help="timed augmentation repeats")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where augmentation runs")
    parser.add_argument("--gpu-tflops", type=float, default=20.0, help="sustained GPU rate for the estimate")
    args = parser.parse_args(argv)
    work = (args.work or Path(tempfile.mkdtemp(prefix="loader_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    store = prepare(work, args.cases)
    device = torch.device(args.device)
    rows = []
    for stage, (_, _, arch, size) in STAGES.items():
        assert PRODUCTION[arch]["input_size"] == size
        gflops = count(arch)["gflops"]
        step_s = {nets: 3 * gflops * 1e9 * BATCH * nets / (args.gpu_tflops * 1e12) for nets in (1, 2)}
        rates = {workers: loader_rate(store, stage, workers, args.batches) for workers in args.workers}
        augment_s = augmentation_seconds(store, stage, device, args.repeats)
        rows.append({"stage": stage, "size": size, "forward_gflops": round(gflops, 1), "loader_samples_per_s": {
            str(w): round(r, 1) for w, r in rates.items()}, "augment_s_per_batch": round(augment_s, 4),
            "augment_device": args.device, "gpu_step_s_estimate": {"supervised": round(step_s[1], 4),
            "cps_two_nets": round(step_s[2], 4)}, "gpu_samples_per_s_needed": round(BATCH / step_s[1], 1)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nbench.loader: store of {args.cases} medium phantoms; batch {BATCH}; GPU estimate at {args.gpu_tflops:g} "
          "TFLOP/s")  # fmt: skip
    print(
        "| stage | input | loader samples/s by workers | augmentation s/batch | H100 step s (est.) "
        "| samples/s a GPU needs |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        loaders = ", ".join(f"{w}: {r}" for w, r in row["loader_samples_per_s"].items())
        print(f"| {row['stage']} | {row['size']}³ | {loaders} | {row['augment_s_per_batch']} ({row['augment_device']}) "
              f"| {row['gpu_step_s_estimate']['supervised']} | {row['gpu_samples_per_s_needed']} |")  # fmt: skip
    (work / "loader.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
