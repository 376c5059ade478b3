"""Two-stage inference on a full-size CT: seconds per step, end to end, and peak memory.

Run from the repository root::

    .venv/bin/python -m bench.inference                      # default model and production-size nets, CPU
    .venv/bin/python -m bench.inference --models production --repeats 5 --slices 300
    .venv/bin/python -m bench.inference --device cuda
    .venv/bin/python -m bench.inference --precision bf16          # autocast bf16 on the CPU

The CT is a full-size phantom (512 x 512 x ``--slices``, 0.8 x 0.8 x 1.25 mm, see
:mod:`bench.fixtures`). ``default`` is ``model_weights/``; ``production`` has random weights at
production size (coarse 160³, fine 192³) with a coarse head biased so that the fine stage runs
on the largest crop possible (the whole volume): an upper bound. ``realistic`` runs the same
production-size nets (their forward passes are timed) but replaces their outputs by the
phantom's true labels at the network's size, softened (a 3³ mean of the one-hot maps plus 5 %
noise), so that the crop, the restore and the clean-up work on organ-shaped maps as a trained
model's would; the replacement outputs are built in the warm-up run, outside the timings, and
kept (their ~0.6 GB, and the labels' 79 MB, count in its peak memory: an overestimate). Each model runs in a fresh
subprocess (peak memory is its own: ``VmHWM`` on CPU, ``torch.cuda.max_memory_allocated`` on
GPU), one warm-up then ``--repeats`` timed runs of read → predict → write; medians are printed.
Targets (2-core CPU): production ≤ 20 s and ≤ 3 GB, default ≤ 5 s; GPU ≤ 2 s. Nothing is
asserted: this is not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = [
    "read", "reorient", "coarse_resize", "coarse_network", "coarse_box", "fine_resize", "fine_network",
    "fine_restore", "cleanup", "quality", "paste", "write",
]  # fmt: skip
TARGETS = {
    "cpu": {"production": 20.0, "realistic": 5.0, "default": 2.5},
    "cuda": {"production": 2.0, "realistic": 2.0, "default": 2.0},
}


def oracle_outputs(predictor, truth: Path) -> None:
    """Make ``predictor``'s stages return softened true labels after running their networks."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from segcore.geometry import to_canonical
    from segcore.io import read_volume

    labels, geometry = read_volume(truth, check_ct=False)
    canonical = torch.from_numpy(np.ascontiguousarray(to_canonical(labels, geometry)[0]))
    cache: dict = {}
    located = {}

    def soft(region, size):
        part = canonical[region][None, None].float()
        resized = F.interpolate(part, size=tuple(size), mode="nearest")[0, 0].long()
        one_hot = F.one_hot(resized, 14).permute(3, 0, 1, 2).float()[None]
        blurred = F.avg_pool3d(one_hot, 3, stride=1, padding=1, count_include_pad=False)[0]
        noisy = blurred + 0.05 * torch.rand(blurred.shape, generator=torch.Generator().manual_seed(0))
        return noisy / noisy.sum(0, keepdim=True)

    def replaced(stage, original):
        def probabilities(volume, watch):
            original(volume, watch)  # the real forward pass, timed
            region = (slice(None),) * 3 if stage == "coarse" else tuple(slice(a, b) for a, b in located["box"])
            key = (stage, tuple((r.start, r.stop) for r in region))
            if key not in cache:  # built once, in the warm-up run
                cache[key] = soft(region, original.__self__.input_size)
            return cache[key]

        return probabilities

    locate = predictor.locator._locate

    def locate_and_remember(volume, spacing, watch):
        result = locate(volume, spacing, watch)
        located["box"] = result.box
        return result

    predictor.locator.model.probabilities = replaced("coarse", predictor.locator.model.probabilities)
    predictor.locator._locate = locate_and_remember
    predictor.fine.probabilities = replaced("fine", predictor.fine.probabilities)


def measure(
    ct: Path, weights: Path, device: str, precision: str, repeats: int, out: Path, truth: Path | None = None
) -> dict:
    """In this (fresh) process: warm-up, then ``repeats`` timed read -> predict -> write."""
    import numpy as np
    import torch

    from bench.prepare import peak_rss_mb
    from segcore.io import read_volume, write_volume
    from segcore.predictor import Predictor

    predictor = Predictor.from_weights(weights, device, precision)
    if truth is not None:
        oracle_outputs(predictor, truth)
    runs = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        image, geometry = read_volume(ct)
        read = time.perf_counter() - started
        prediction = predictor.predict(image, geometry)
        written = time.perf_counter()
        write_volume(out, prediction.labels, geometry)
        timings = {"read": read, **prediction.timings, "write": time.perf_counter() - written}
        timings["end_to_end"] = time.perf_counter() - started
        runs.append(timings)
    cuda = device == "cuda"
    return {
        "runs": runs[1:],
        "peak_mb": torch.cuda.max_memory_allocated() / 1e6 if cuda else peak_rss_mb(),
        "organs": int(np.count_nonzero(np.bincount(prediction.labels.ravel())[1:])),
        "info": predictor.info(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["default", "realistic", "production"],
        choices=["default", "realistic", "production"],
    )  # fmt: skip
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "model_weights", help="the default model")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--work", type=Path, help="keep the CT and weights here (default: a temp folder)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        result = measure(
            Path(spec["ct"]),
            Path(spec["weights"]),
            spec["device"],
            spec["precision"],
            spec["repeats"],
            Path(spec["out"]),
            Path(spec["truth"]) if spec.get("truth") else None,
        )
        print(json.dumps(result))
        return

    from bench.fixtures import full_size_ct, full_size_labels, random_production_weights

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-inference-"))
    work.mkdir(parents=True, exist_ok=True)
    ct = full_size_ct(work / f"phantom_{args.slices}.nii.gz", args.slices)
    print(f"CT: 512 x 512 x {args.slices} phantom, {ct.stat().st_size / 1e6:.1f} MB; device {args.device}")
    for model in args.models:
        weights = args.weights if model == "default" else random_production_weights(work / "production_weights")
        spec = {"ct": str(ct), "weights": str(weights), "device": args.device, "precision": args.precision,
                "repeats": args.repeats, "out": str(work / f"labels_{model}.nii.gz"),
                "truth": str(full_size_labels(work / f"phantom_{args.slices}_labels.nii.gz", args.slices))
                if model == "realistic" else None}  # fmt: skip
        completed = subprocess.run(
            [sys.executable, "-m", "bench.inference", "--worker", json.dumps(spec)],
            cwd=REPO_ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if completed.returncode != 0:
            print(f"{model}: failed\n{completed.stderr[-2000:]}")
            continue
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        info = result["info"]
        print(
            f"\n{model}: coarse {info['coarse']['input_size']}, fine {info['fine']['input_size']}, "
            f"precision {info['precision']}, {result['organs']} organs in the mask"
        )
        for step in [*STEPS, "end_to_end"]:
            values = [run.get(step, 0.0) for run in result["runs"]]
            print(f"  {step:<15} median {statistics.median(values):7.3f} s   runs {[round(v, 3) for v in values]}")
        target = TARGETS[args.device][model]
        end_to_end = statistics.median(run["end_to_end"] for run in result["runs"])
        print(f"  end to end {end_to_end:.2f} s (target <= {target:g} s); peak memory {result['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
