"""Seconds per training step of the engine at production size, and peak memory.

Run from the repository root::

    .venv/bin/python -m bench.training_step                          # both stages, CPU, fp32 and bf16
    .venv/bin/python -m bench.training_step --stage fine --steps 5 --amp bf16
    .venv/bin/python -m bench.training_step --device cuda            # fp16 autocast + GradScaler

Each stage is built from its own config (``coarse_seg/config.yaml``, ``fine_seg/config.yaml``:
network, optimizer, augmentation, HU window, batch size 2) as a real
:class:`~segcore.training.engine.Trainer` over a temporary store of random int16 HU cases and
uint8 labels at the stored sizes (:class:`~data_prepare.prepare.PrepareConfig` defaults: coarse
160³, fine 192³). A step is the trainer's own step function (:class:`SupervisedStep`: on-device
augmentation, HU window and z-score, forward under autocast, Dice + cross-entropy, backward,
gradient clipping, AdamW, schedule) on a batch already loaded, timed after one warm-up step; the
``prepare_batch`` share (augmentation + normalisation) is timed inside it. Every stage and
precision runs in a fresh subprocess, so its peak resident memory (``VmHWM``) is its own;
on CUDA the memory column is ``torch.cuda.max_memory_allocated``. Figures are printed, never
judged: this is not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.networks import _synchronize
from bench.prepare import peak_rss_mb
from bench.timing import in_subprocess
from segcore.training.engine import Stage

STAGES = {
    "coarse": ("coarse_seg.train", "coarse_seg/config.yaml", "coarse_size"),
    "fine": ("fine_seg.train", "fine_seg/config.yaml", "fine_size"),
}
"""Stage name -> (module defining its ``STAGE``, its config, the :class:`PrepareConfig` field of its stored size)."""
REPO_ROOT = Path(__file__).resolve().parents[1]


def _peak_memory_gb(device: torch.device) -> float:
    """CUDA: peak allocated; CPU: this process's peak resident memory (``VmHWM``, see :func:`peak_rss_mb`)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return peak_rss_mb() / 1e3


def write_random_store(path: Path, stage: Stage, size_zyx: list[int], cases: int, unlabeled: int = 0) -> None:
    """A store of ``cases`` random HU cases (int16, -1024..1500) with random labels, all in fold 1,
    and ``unlabeled`` random cases without labels."""
    from segcore.labels import NUM_CLASSES
    from segcore.store import StoreWriter

    rng = np.random.default_rng(0)
    ids = [f"random_{index}" for index in range(cases)]
    unlabeled_ids = [f"unlabeled_{index}" for index in range(unlabeled)]
    with StoreWriter(path) as writer:
        for case_id in ids:
            arrays = {
                stage.image_key: rng.integers(-1024, 1500, size_zyx, dtype=np.int16),
                stage.label_key: rng.integers(0, NUM_CLASSES, size_zyx, dtype=np.uint8),
            }
            writer.put_case({"id": case_id, "split": "labeled", "config_hash": "bench"}, arrays)
        for case_id in unlabeled_ids:
            arrays = {stage.image_key: rng.integers(-1024, 1500, size_zyx, dtype=np.int16)}
            writer.put_case({"id": case_id, "split": "unlabeled", "config_hash": "bench"}, arrays)
        writer.put_splits({"folds": [[], ids], "unlabeled": unlabeled_ids, "test": []})


def measure(
    stage_name: str, amp: str, device_name: str, steps: int, config_path: str | None = None,
    overrides: list[str] = (), size: int | None = None, unlabeled: int = 0, threads: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Time ``steps`` engine steps (after one warm-up) of one stage in this process: its production
    config and stored size, or ``config_path`` with ``overrides`` at ``size``³, with ``unlabeled``
    unlabeled cases in the store and ``threads`` intra-op threads."""
    import importlib

    from data_prepare.prepare import PrepareConfig
    from segcore.runtime.distributed import DistributedContext
    from segcore.training.config import load_stage_config
    from segcore.training.engine import Trainer

    module, stage_config, size_field = STAGES[stage_name]
    stage = importlib.import_module(module).STAGE
    device = torch.device(device_name)
    if threads:
        torch.set_num_threads(threads)
    baseline_gb = _peak_memory_gb(device)
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "store.lmdb"
        amp_value = json.dumps(amp)  # quoted: YAML would read off as false
        overrides = [*overrides, f"store={store}", f"output_dir={folder}/run", "data.workers=0",
                     f"train.amp={amp_value}"]  # fmt: skip
        config = load_stage_config(REPO_ROOT / (config_path or stage_config), overrides)
        stored = [size] * 3 if size else getattr(PrepareConfig(), size_field)
        write_random_store(store, stage, stored, config.data.batch_size, unlabeled)
        context = DistributedContext(rank=0, local_rank=0, world_size=1, device=device)
        trainer = Trainer(config, stage, context)
        batch = next(iter(trainer.loader))
        prepare_seconds: list[float] = []
        prepare_batch = trainer.prepare_batch

        def timed_prepare_batch(*args, **kwargs):
            started = time.perf_counter()
            result = prepare_batch(*args, **kwargs)
            _synchronize(device)
            prepare_seconds.append(time.perf_counter() - started)
            return result

        trainer.prepare_batch = timed_prepare_batch
        for member in trainer.members:
            member.net.train()
        times = []
        for _ in range(steps + 1):  # the first step is the warm-up (allocator, kernel selection)
            _synchronize(device)
            started = time.perf_counter()
            logs = trainer.step_fn(trainer, batch)
            _synchronize(device)
            times.append(time.perf_counter() - started)
        trainer.close()
    return {
        "seconds": statistics.median(times[1:]),
        "step_seconds": times,
        "prepare_seconds": statistics.median(prepare_seconds[1:]),
        "peak_gb": _peak_memory_gb(device),
        "baseline_gb": baseline_gb,
        "batch": list(batch["image"].shape),
        "arch": config.network.arch,
        "input_size": list(config.input_size),
        "loss": logs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=[*STAGES, "both"], default="both")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (default 3)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--amp", nargs="+", choices=["off", "bf16", "fp16"],
        help="precisions to time (default: off and bf16 on CPU, fp16 with a GradScaler on CUDA)",
    )  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(measure(**json.loads(args.worker))))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    if args.device == "cpu" and args.amp and "fp16" in args.amp:
        parser.error("--amp fp16 needs --device cuda; use off or bf16 on CPU")
    amps = args.amp or (["fp16"] if args.device == "cuda" else ["off", "bf16"])
    stages = list(STAGES) if args.stage == "both" else [args.stage]

    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"median of {args.steps} steps after 1 warm-up")  # fmt: skip
    rows = []
    for stage_name in stages:
        for amp in amps:
            task = {"stage_name": stage_name, "amp": amp, "device_name": args.device, "steps": args.steps}
            result = in_subprocess("bench.training_step", task)
            rows.append((stage_name, amp, result))
            steps = ", ".join(f"{s:.2f}" for s in result["step_seconds"])
            print(f"  {stage_name} {result['arch']} {'x'.join(map(str, result['batch']))} amp={amp}: "
                  f"{result['seconds']:.2f} s/step (of which prepare_batch {result['prepare_seconds']:.2f} s), "
                  f"peak {result['peak_gb']:.2f} GB; all steps, warm-up first: {steps}", flush=True)  # fmt: skip

    memory = "peak GPU GB" if args.device == "cuda" else "peak RSS GB"
    header = f"| stage | network | input | batch | amp | s/step | of which prepare_batch | {memory} | baseline GB |"
    print("\n" + header + "\n" + "|---" * 9 + "|")
    for stage_name, amp, result in rows:
        print(f"| {stage_name} | {result['arch']} | {'x'.join(map(str, result['input_size']))} | "
              f"{result['batch'][0]} | {amp} | {result['seconds']:.2f} | {result['prepare_seconds']:.2f} | "
              f"{result['peak_gb']:.2f} | {result['baseline_gb']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
