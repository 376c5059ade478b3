"""Cost of the two segmentation networks at production size: parameters, FLOPs, time, memory.

Run from the repository root::

    .venv/bin/python -m bench.networks            # CPU, 3 timed repeats after a warm-up
    .venv/bin/python -m bench.networks --quick    # 1 timed repeat
    .venv/bin/python -m bench.networks --device cuda

Every measurement runs in a fresh subprocess, so its peak resident memory (``ru_maxrss``) is
its own: inference (batch 1, ``torch.inference_mode``) in fp32 and under autocast (bf16 on CPU,
fp16 on CUDA), and one training step (batch 2: forward, cross-entropy, backward, SGD step) in
fp32 and under autocast. On CUDA the memory column is ``torch.cuda.max_memory_allocated``.
FLOPs count convolutions only (``FlopCounterMode``), not norms, activations or the final
trilinear upsampling. Figures are printed, never judged: this is not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.timing import in_subprocess
from segcore.labels import NUM_CLASSES
from segcore.networks import build_network

PRODUCTION = {
    "residual_unet3d": {"input_size": 160, "init_args": {}},
    "efficient_context_net": {"input_size": 192, "init_args": {}},
}
"""Each network's production input size (cube edge, voxels) and constructor arguments (defaults)."""

MODES = ("infer-fp32", "infer-amp", "train-fp32", "train-amp")
REPO_ROOT = Path(__file__).resolve().parents[1]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def measure(arch: str, mode: str, device_name: str, repeats: int) -> dict[str, Any]:
    """Time one mode of one network in this process; returns seconds and peak memory."""
    device = torch.device(device_name)
    baseline_gb = _peak_memory_gb(device)
    spec = PRODUCTION[arch]
    net = build_network(arch, **spec["init_args"]).to(device)
    size = spec["input_size"]
    train = mode.startswith("train")
    batch = 2 if train else 1
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=mode.endswith("amp"))
    images = torch.randn(batch, 1, size, size, size, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch, size, size, size), device=device)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        if train:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = torch.nn.functional.cross_entropy(net(images), labels)
            loss.backward()
            optimizer.step()
        else:
            with torch.inference_mode(), autocast:
                net(images)

    net.train(train)
    times = []
    for _ in range(repeats + 1):  # the first run is the warm-up (allocator, kernel selection)
        _synchronize(device)
        start = time.perf_counter()
        step()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times[1:]), "peak_gb": _peak_memory_gb(device), "baseline_gb": baseline_gb}


def count(arch: str) -> dict[str, Any]:
    """Parameters and forward FLOPs (convolutions) of one network at its production size."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = PRODUCTION[arch]
    net = build_network(arch, **spec["init_args"]).eval()
    size = spec["input_size"]
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net(torch.zeros(1, 1, size, size, size))
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "gflops": counter.get_total_flops() / 1e9,
        "input_multiple": net.input_multiple,
        "init_args": net.init_args,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 timed repeat instead of 3")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--arch", nargs="+", default=list(PRODUCTION), choices=list(PRODUCTION))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        task = json.loads(args.worker)
        result = count(task["arch"]) if task["mode"] == "count" else measure(**task)
        print(json.dumps(result))
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")

    repeats = 1 if args.quick else 3
    amp_name = "fp16" if args.device.startswith("cuda") else "bf16"
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, median of {repeats}")
    rows = []
    for arch in args.arch:
        info = in_subprocess("bench.networks", {"arch": arch, "mode": "count"})
        size = PRODUCTION[arch]["input_size"]
        print(f"{arch}: {info['params'] / 1e6:.2f} M params, {info['gflops']:.1f} GFLOP per {size}³ forward, "
              f"input multiple {info['input_multiple']}, init_args {info['init_args']}")  # fmt: skip
        for mode in args.modes:
            task = {"arch": arch, "mode": mode, "device_name": args.device, "repeats": repeats}
            result = in_subprocess("bench.networks", task)
            rows.append((arch, size, mode.replace("amp", amp_name), result))
            print(f"  {mode:<10} {result['seconds']:7.2f} s  peak {result['peak_gb']:.2f} GB", flush=True)

    memory = "peak GPU GB" if args.device.startswith("cuda") else "peak RSS GB"
    header = f"| network | input | run | batch | seconds | {memory} | baseline GB |"
    print("\n" + header + "\n" + "|---" * 7 + "|")
    for arch, size, mode, result in rows:
        batch = 2 if mode.startswith("train") else 1
        print(f"| {arch} | {size}³ | {mode} | {batch} | {result['seconds']:.2f} | "
              f"{result['peak_gb']:.2f} | {result['baseline_gb']:.2f} |")  # fmt: skip
    by_key = {(arch, mode): result for arch, _, mode, result in rows}
    for kind in ("infer", "train"):
        for arch in args.arch:
            fp32, amp = by_key.get((arch, f"{kind}-fp32")), by_key.get((arch, f"{kind}-{amp_name}"))
            if fp32 and amp:
                verdict = "faster" if amp["seconds"] < fp32["seconds"] else "not faster"
                print(f"{kind} {arch}: {amp_name} autocast is {verdict} ({fp32['seconds'] / amp['seconds']:.2f}x)")
    fp32_infer = [by_key.get((arch, "infer-fp32")) for arch in PRODUCTION]
    if all(fp32_infer):
        total = sum(result["seconds"] for result in fp32_infer)
        peak = max(result["peak_gb"] for result in fp32_infer)
        print(f"coarse + fine fp32 inference: {total:.2f} s, peak {peak:.2f} GB (the larger of the two)")


if __name__ == "__main__":
    main()
