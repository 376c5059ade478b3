"""Two-stage inference on a full-size CT: seconds per step, end to end, whole process, the floor.

Run from the repository root::

    .venv/bin/python -m bench.inference                      # default, realistic and production, CPU
    .venv/bin/python -m bench.inference --models production --repeats 5 --slices 300
    .venv/bin/python -m bench.inference --device cuda
    .venv/bin/python -m bench.inference --precision fp32          # precision auto: bf16 where the CPU has it

The CT is a full-size phantom (512 x 512 x ``--slices``, 0.8 x 0.8 x 1.25 mm, see
:mod:`bench.fixtures`). ``default`` is ``model_weights/``; ``production`` has random weights at
production size (coarse 160³, fine 192³; full-resolution nets, or half-resolution ones with
``--output-stride 2``) with a coarse head biased so that the fine stage runs
on the largest crop possible (the whole volume): an upper bound. ``realistic`` runs the same
production-size nets (their forward passes are timed) but replaces their outputs by the
phantom's true labels at the network's size, softened (a 3³ mean of the one-hot maps plus 5 %
noise), so that the crop, the restore and the clean-up work on organ-shaped maps as a trained
model's would; the time spent building the replacement outputs is measured and taken out, and
their memory (~0.6 GB, and the labels' 79 MB) counts in its peak: an overestimate.

Per model, three measurements:

* **in-process**: a fresh subprocess does one warm-up then ``--repeats`` timed runs of
  read → predict → write; medians per step. Peak memory: ``VmHWM`` on CPU,
  ``torch.cuda.max_memory_allocated`` on GPU; on CPU also the high-water mark after each step of
  the first run, which says which step raises it (the allocator keeps freed memory, as in
  ``predict.batch``, so later runs reuse it).
* **floor**: what the work needs at this machine's measured rates, in the same subprocess:
  the networks' FLOPs (``FlopCounterMode``: convolutions and matmuls) ÷ the rate of a 4096²
  ``torch.matmul`` at the precision used, + the input's bytes ÷ ISA-L's gzip decompression rate,
  + the mask's bytes ÷ ISA-L's level-1 compression rate. The ratio end to end / floor says how
  much time goes around the networks and the files.
* **whole process** (``--whole`` runs each, default 3): ``default`` and ``production`` run
  ``sh predict.sh`` on a folder holding the CT (Python start, imports, weights, one case, exit);
  ``realistic`` cannot (its outputs are swapped in-process), so a fresh subprocess runs
  ``predict.batch``'s own per-case function (the same allocator setting, imports, load, read,
  predict, organ statistics, write, record, results table, exit), and the replacement outputs'
  build time is subtracted. Peak RSS of the
  process tree (``RUSAGE_CHILDREN``).

Targets (2-core CPU): realistic whole process ≤ 5 s and ≤ 1.5 GB, default whole process ≤ 2.5 s,
in-process ≤ 2× the floor; GPU ≤ 2 s. Nothing is asserted: this is not a test.
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

from bench.timing import call_seconds

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = [
    "read", "reorient", "coarse_resize", "coarse_network", "coarse_box", "fine_resize", "fine_network",
    "fine_restore", "cleanup", "quality", "paste", "write",
]  # fmt: skip
TARGETS = {
    "cpu": {"production": 20.0, "realistic": 5.0, "default": 2.5},
    "cuda": {"production": 2.0, "realistic": 2.0, "default": 2.0},
}
MATMUL_SIZE = 4096


def oracle_outputs(predictor, truth: Path, keep: bool = True) -> dict[str, float]:
    """Make ``predictor``'s stages return softened true labels after running their networks.

    With ``keep`` the outputs are built once and reused by later runs; without, each is dropped
    after use, as a network's output would be (peak memory as in a real run, plus the labels).

    Returns:
        ``{"build_s": ...}``: seconds spent building replacement outputs so far (taken out of timings).
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    from segcore.volumes import read_volume
    from segcore.volumes.geometry import to_canonical

    labels, geometry = read_volume(truth, check_ct=False)
    canonical = torch.from_numpy(np.ascontiguousarray(to_canonical(labels, geometry)[0]))
    cache: dict = {}
    located = {}
    spent = {"build_s": 0.0}

    def soft(region, size):
        started = time.perf_counter()
        part = canonical[region][None, None].float()
        resized = F.interpolate(part, size=tuple(size), mode="nearest")[0, 0]
        generator = torch.Generator().manual_seed(0)
        result = torch.empty((14, *size))
        for label in range(14):  # one class at a time: the temporaries stay small
            one_hot = (resized == label).float()[None, None]
            result[label] = F.avg_pool3d(one_hot, 3, stride=1, padding=1, count_include_pad=False)[0, 0]
            result[label] += 0.05 * torch.rand(size, generator=generator)
        result /= result.sum(0, keepdim=True)
        spent["build_s"] += time.perf_counter() - started
        return result

    def replaced(stage, original):
        def probabilities(volume, watch):
            original(volume, watch)  # the real forward pass, timed
            region = (slice(None),) * 3 if stage == "coarse" else tuple(slice(a, b) for a, b in located["box"])
            key = (stage, tuple((r.start, r.stop) for r in region))
            if key not in cache:  # built once; its time is kept out of the step timings and end to end
                before = spent["build_s"]
                cache[key] = soft(region, original.__self__.output_size)
                watch._last += spent["build_s"] - before
            return cache[key] if keep else cache.pop(key)

        return probabilities

    locate = predictor.locator.locate

    def locate_and_remember(volume, spacing, timings=None):
        result = locate(volume, spacing, timings)
        located["box"] = result.box
        return result

    predictor.locator.model.probabilities = replaced("coarse", predictor.locator.model.probabilities)
    predictor.locator.locate = locate_and_remember
    predictor.fine.probabilities = replaced("fine", predictor.fine.probabilities)
    return spent


def network_gflop(predictor) -> float:
    """Forward-pass GFLOP of both stages' ensembles at their input sizes (counted on the meta device)."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    total = 0
    for model in (predictor.locator.model, predictor.fine):
        for net in model.nets:
            with FlopCounterMode(display=False) as counter, torch.inference_mode():
                copy.deepcopy(net).to("meta")(torch.empty(1, 1, *model.input_size, device="meta"))
            total += counter.get_total_flops()
    return total / 1e9


def best_seconds(work, repeats: int = 3) -> float:
    """The fastest of ``repeats`` calls of ``work()`` (after one untimed call)."""
    return min(call_seconds(work, repeats))


def floor_seconds(predictor, ct: Path, labels) -> dict[str, float]:
    """The floor of one case at this machine's rates, measured now (see the module docstring)."""
    import torch
    from isal import igzip

    device = predictor.device
    dtype = predictor.fine.autocast_dtype if predictor.fine.autocast_dtype != torch.float32 else torch.float32
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device).to(dtype)

    def matmul():
        torch.matmul(a, a)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    matmul_rate = 2 * MATMUL_SIZE**3 / best_seconds(matmul) / 1e9
    compressed = ct.read_bytes()
    raw = labels.tobytes()
    read_s = best_seconds(lambda: igzip.decompress(compressed), 2)
    write_s = best_seconds(lambda: igzip.compress(raw, compresslevel=1), 2)
    gflop = network_gflop(predictor)
    return {
        "matmul_gflops": matmul_rate, "gflop": gflop, "networks": gflop / matmul_rate,
        "read": read_s, "write": write_s, "total": gflop / matmul_rate + read_s + write_s,
    }  # fmt: skip


def measure(
    ct: Path, weights: Path, device: str, precision: str, repeats: int, out: Path, truth: Path | None = None
) -> dict:
    """In this (fresh) process: warm-up, then ``repeats`` timed read -> predict -> write, then the floor."""
    import numpy as np
    import torch

    from bench.prepare import peak_rss_mb
    from segcore.inference.predictor import Predictor
    from segcore.inference.stage import Stopwatch
    from segcore.runtime.allocator import keep_freed_memory
    from segcore.volumes import read_volume, write_volume

    keep_freed_memory()  # as predict.batch does
    predictor = Predictor.from_weights(weights, device, precision)
    oracle = oracle_outputs(predictor, truth) if truth is not None else {"build_s": 0.0}
    high_water = {"weights": peak_rss_mb()}  # the first run's VmHWM after each step: the steps that raise it
    lap = Stopwatch.lap

    def lap_and_mark(watch, name):
        lap(watch, name)
        high_water.setdefault(name, peak_rss_mb())

    Stopwatch.lap = lap_and_mark
    runs = []
    for _ in range(repeats + 1):
        built = oracle["build_s"]
        started = time.perf_counter()
        image, geometry = read_volume(ct)
        read = time.perf_counter() - started
        high_water.setdefault("read", peak_rss_mb())
        prediction = predictor.predict(image, geometry)
        written = time.perf_counter()
        write_volume(out, prediction.labels, geometry)
        high_water.setdefault("write", peak_rss_mb())
        timings = {"read": read, **prediction.timings, "write": time.perf_counter() - written}
        timings["end_to_end"] = time.perf_counter() - started - (oracle["build_s"] - built)
        runs.append(timings)
    cuda = device == "cuda"
    peak = torch.cuda.max_memory_allocated() / 1e6 if cuda else peak_rss_mb()
    Stopwatch.lap = lap
    return {
        "runs": runs[1:],
        "peak_mb": peak,
        "high_water_mb": {} if cuda else high_water,
        "organs": int(np.count_nonzero(np.bincount(prediction.labels.ravel())[1:])),
        "info": predictor.info(),
        "floor": floor_seconds(predictor, ct, prediction.labels),
    }


def once(ct: Path, weights: Path, device: str, precision: str, out: Path, truth: Path) -> dict:
    """One case as ``predict.batch`` runs it in a fresh process (imports are timed by the caller)."""
    import gc

    from segcore.runtime.allocator import keep_freed_memory

    keep_freed_memory()
    from predict.batch import predict_case
    from predict.cases import Case, output_name
    from segcore.inference.predictor import Predictor
    from segcore.outputs.records import rebuild_table

    predictor = Predictor.from_weights(weights, device, precision)
    oracle = oracle_outputs(predictor, truth, keep=False)
    folder = out.parent / f"{out.name}.once"
    folder.mkdir(exist_ok=True)
    # predict.batch's own per-case path: read, predict, organ statistics, mask, record; then the table
    result = predict_case(predictor, Case(ct.name, ct, output_name(ct)), folder)
    if result.status != "written":
        raise RuntimeError(result.reason)
    rebuild_table(folder)
    gc.freeze()  # as predict.batch does before exit
    return {"oracle_build_s": oracle["build_s"]}


def whole_process(command: list[str], repeats: int) -> list[dict]:
    """Wall seconds and peak RSS (MB, the process tree) of ``command`` run ``repeats`` times, each alone."""
    probe = (
        "import json, resource, subprocess, sys, time\n"
        "started = time.perf_counter()\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "wall = time.perf_counter() - started\n"
        "print(json.dumps({'wall': wall, 'rc': done.returncode, 'tail': (done.stdout + done.stderr)[-1500:],"
        " 'peak_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e3}))\n"
    )
    results = []
    for _ in range(repeats):
        completed = subprocess.run(
            [sys.executable, "-c", probe, *command], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
        result = json.loads(completed.stdout)
        if result["rc"] != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result['tail']}")
        results.append(result)
    return results


def run_whole(model: str, spec: dict, work: Path, repeats: int) -> tuple[list[float], list[float]]:
    """Whole-process seconds and peak MB of one case, ``repeats`` times (see the module docstring)."""
    import shutil

    if model == "realistic":
        command = [sys.executable, "-m", "bench.inference", "--once", json.dumps(spec)]
    else:
        folder = work / "whole_input"
        folder.mkdir(exist_ok=True)
        link = folder / Path(spec["ct"]).name
        if not link.exists():
            link.symlink_to(spec["ct"])
        output = work / f"whole_output_{model}"
        command = ["sh", "predict.sh", "-i", str(folder), "-o", str(output), "--overwrite", "--weights",
                   spec["weights"], "--device", spec["device"], "--precision", spec["precision"]]  # fmt: skip
    walls, peaks = [], []
    for result in whole_process(command, repeats):
        subtract = json.loads(result["tail"].strip().splitlines()[-1])["oracle_build_s"] if model == "realistic" else 0
        walls.append(result["wall"] - subtract)
        peaks.append(result["peak_mb"])
    if model != "realistic":
        shutil.rmtree(output, ignore_errors=True)
    return walls, peaks


def report(model: str, result: dict, whole: tuple[list[float], list[float]] | None, device: str) -> None:
    """Print one model's figures."""
    info, floor = result["info"], result["floor"]
    print(
        f"\n{model}: coarse {info['coarse']['input_size']}, fine {info['fine']['input_size']}, "
        f"precision {info['precision']}, {result['organs']} organs in the mask"
    )
    for step in [*STEPS, "end_to_end"]:
        values = [run.get(step, 0.0) for run in result["runs"]]
        print(f"  {step:<15} median {statistics.median(values):7.3f} s   runs {[round(v, 3) for v in values]}")
    end_to_end = statistics.median(run["end_to_end"] for run in result["runs"])
    print(f"  in-process end to end {end_to_end:.3f} s; peak memory {result['peak_mb']:.0f} MB")
    if result.get("high_water_mb"):
        marks = ", ".join(f"{step} {mb:.0f}" for step, mb in result["high_water_mb"].items())
        print(f"  high-water mark (VmHWM, MB) after each step of the first run: {marks}")
    print(
        f"  floor {floor['total']:.3f} s = networks {floor['gflop']:.1f} GFLOP at {floor['matmul_gflops']:.0f} "
        f"GFLOP/s ({MATMUL_SIZE}² matmul, {info['precision']}) {floor['networks']:.3f} s + gunzip input "
        f"{floor['read']:.3f} s + gzip -1 mask {floor['write']:.3f} s; end to end / floor = "
        f"{end_to_end / floor['total']:.2f} (target <= 2)"
    )
    if whole:
        walls, peaks = whole
        print(
            f"  whole process median {statistics.median(walls):.3f} s (target <= {TARGETS[device][model]:g} s) "
            f"runs {[round(v, 3) for v in walls]}; peak RSS {max(peaks):.0f} MB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["default", "realistic", "production"],
        choices=["default", "realistic", "production"],
    )  # fmt: skip
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "model_weights", help="the default model")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--whole", type=int, default=3, help="whole-process runs per model (0: none)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--work", type=Path, help="keep the CT and weights here (default: a temp folder)")
    parser.add_argument(
        "--output-stride", type=int, default=1, choices=[1, 2],
        help="production-size nets: full-resolution (1) or half-resolution (2) output",
    )  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--once", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker or args.once:
        spec = json.loads(args.worker or args.once)
        paths = {key: Path(spec[key]) for key in ("ct", "weights", "out")}
        truth = Path(spec["truth"]) if spec.get("truth") else None
        if args.once:
            result = once(paths["ct"], paths["weights"], spec["device"], spec["precision"], paths["out"], truth)
        else:
            result = measure(
                paths["ct"], paths["weights"], spec["device"], spec["precision"], spec["repeats"], paths["out"], truth
            )
        print(json.dumps(result))
        return

    from bench.fixtures import full_size_ct, full_size_labels, random_production_weights

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-inference-"))
    work.mkdir(parents=True, exist_ok=True)
    ct = full_size_ct(work / f"phantom_{args.slices}.nii.gz", args.slices)
    print(f"CT: 512 x 512 x {args.slices} phantom, {ct.stat().st_size / 1e6:.1f} MB; device {args.device}")
    for model in args.models:
        production = work / f"production_weights_stride{args.output_stride}"
        weights = (
            args.weights if model == "default" else random_production_weights(production, 100.0, args.output_stride)
        )
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
        whole = run_whole(model, spec, work, args.whole) if args.whole > 0 else None
        report(model, result, whole, args.device)


if __name__ == "__main__":
    main()
