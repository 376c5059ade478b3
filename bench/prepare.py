"""Cost of data preparation at production settings: seconds and peak memory per case, cases per second.

Run from the repository root::

    .venv/bin/python -m bench.prepare                          # 3 phantoms, 512 x 512 x 200 / 250 / 300
    .venv/bin/python -m bench.prepare --cases 5 --slices 300
    .venv/bin/python -m bench.prepare --data-root dataset      # existing FLARE22-layout cases instead

Without ``--data-root``, labeled full-size phantoms are generated into a temporary folder on
the usual clinical grid (512 x 512 in-plane, 0.8 mm, 1.25 mm slices, x and y flipped: see
:func:`bench.phantom_generation.clinical_grid`), case ``i`` with the ``i``-th entry of
``--slices`` (cycled), written in the FLARE22 layout as :func:`segcore.phantom.write_dataset`
does. Then, with :class:`~data_prepare.prepare.PrepareConfig` defaults (coarse 160³, fine 192³):

* each case goes through :func:`data_prepare.prepare.prepare_case` in a fresh subprocess with
  one torch thread (as a pool worker runs it), so its peak resident memory (``VmHWM``) is
  that of one worker doing one case; the time of each library call it makes is recorded
  (``a > b``: ``b`` inside ``a``), and the store write the parent would do is timed after it;
* the whole :func:`data_prepare.prepare.run` (``--workers`` processes, default 2) over the data
  root is timed in another subprocess, which watches its workers' peak memory (``VmHWM``).

Figures are printed next to the targets (≤ 4 s per case per worker, ≤ 2 GB peak per worker);
nothing is asserted: this is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

TARGET_SECONDS_PER_CASE = 4.0
TARGET_PEAK_MB = 2000.0
REPO_ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident memory of a process's address space (``VmHWM``), MB.

    Not ``ru_maxrss``: Linux carries a parent's high-water mark through ``fork`` and ``exec``
    into the child's, so a child started by a process that once held the phantoms would report those.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e3  # kB
    raise RuntimeError(f"/proc/{pid}/status holds no VmHWM")


def _watch_children(stop: threading.Event, peaks: dict[int, float]) -> None:
    """Until ``stop``, record every child's peak memory (pool workers), which is lost when it exits."""
    parent = os.getpid()
    while not stop.wait(0.05):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                    peaks[int(entry.name)] = peak_rss_mb(entry.name)
            except (OSError, RuntimeError, ValueError):  # exited meanwhile, or a zombie without memory
                continue


def write_phantoms(root: Path, slices: list[int], seed: int) -> list[dict[str, Any]]:
    """Labeled full-size phantoms on clinical grids, in the FLARE22 layout under ``root``."""
    from bench.phantom_generation import clinical_grid
    from segcore.phantom import SPLITS, case_id, case_seed, generate_case
    from segcore.volumes import write_volume

    split = SPLITS["labeled"]
    (root / split.image_dir).mkdir(parents=True, exist_ok=True)
    (root / split.mask_dir).mkdir(parents=True, exist_ok=True)
    records = []
    for index, count in enumerate(slices):
        started = time.perf_counter()
        phantom = generate_case(case_seed(seed, "labeled", index), "full", geometry=clinical_grid(count))
        name = case_id("labeled", index)
        write_volume(root / split.image_dir / f"{name}_0000.nii.gz", phantom.image, phantom.geometry)
        write_volume(root / split.mask_dir / f"{name}.nii.gz", phantom.label, phantom.geometry)
        records.append({"id": name, "seconds": time.perf_counter() - started})
    return records


def _instrument(timings: dict[str, float]) -> None:
    """Record the wall time of the library calls ``prepare_case`` makes, by call path, into ``timings``."""
    import data_prepare.prepare as prepare
    import segcore.volumes
    import segcore.volumes.resample
    from segcore.volumes.geometry import Reorientation

    stack: list[str] = []

    def size_of(argument: int):
        return lambda args: f" → {'x'.join(map(str, args[argument]))}"

    def shape_of(args) -> str:
        return f" ({'x'.join(map(str, args[0].shape))})"

    def wrap(owner: Any, name: str, shown: str, detail=None) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            stack.append(shown + (detail(args) if detail else ""))
            key = " > ".join(stack)
            timings.setdefault(key, 0.0)  # rows in call order, an outer call before its inner ones
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timings[key] += time.perf_counter() - started
                stack.pop()

        setattr(owner, name, timed)

    wrap(prepare, "read_volume", "read_volume")
    wrap(segcore.volumes, "check_ct_values", "check_ct_values")
    wrap(prepare, "read_labels_on_grid", "read_labels_on_grid")
    wrap(Reorientation, "apply", "reorient (view)")
    wrap(prepare, "resize_image", "resize_image", size_of(1))
    wrap(prepare, "resize_labels", "resize_labels", size_of(1))
    wrap(segcore.volumes.resample, "_as_5d", "to tensor (contiguous copy, cast)")
    wrap(prepare, "foreground_box", "foreground_box")
    wrap(prepare, "body_box", "body_box")
    wrap(prepare, "expand_box", "expand_box")
    wrap(prepare, "crop", "crop (view)")
    wrap(prepare, "to_int16", "to_int16", shape_of)


def measure_case(data_root: str, case: dict[str, Any]) -> dict[str, Any]:
    """Prepare one case in this (fresh) process with one torch thread; time it, its calls and its write."""
    import torch

    from data_prepare.cases import CaseSource
    from data_prepare.prepare import PrepareConfig, prepare_case
    from segcore.store import StoreWriter

    torch.set_num_threads(1)  # as the pool's workers do: one case per core
    config = PrepareConfig(data_root=data_root)
    timings: dict[str, float] = {}
    _instrument(timings)
    baseline_mb = peak_rss_mb()
    started = time.perf_counter()
    meta, arrays = prepare_case(CaseSource(**case), config)
    seconds = time.perf_counter() - started
    peak_mb = peak_rss_mb()
    with tempfile.TemporaryDirectory() as folder, StoreWriter(Path(folder) / "store.lmdb") as writer:
        started = time.perf_counter()
        writer.put_case(meta, arrays)
        write_seconds = time.perf_counter() - started
    return {
        "size_xyz": meta.geometry["size"],
        "canonical_zyx": meta.canonical_shape,
        "crop_zyx": [stop - start for start, stop in meta.crop_box_canonical],
        "seconds": seconds,
        "peak_mb": peak_mb,
        "baseline_mb": baseline_mb,
        "stages": timings,
        "write_seconds": write_seconds,
        "stored_mb": sum(array.nbytes for array in arrays.values()) / 1e6,
    }


def measure_run(data_root: str, workers: int) -> dict[str, Any]:
    """Time :func:`data_prepare.prepare.run` over ``data_root`` into a temporary store."""
    from data_prepare.prepare import PrepareConfig, run

    with tempfile.TemporaryDirectory() as folder:
        config = PrepareConfig(data_root=data_root, out=str(Path(folder) / "prepared.lmdb"), workers=workers)
        stop, peaks = threading.Event(), {}
        watcher = threading.Thread(target=_watch_children, args=(stop, peaks), daemon=True)
        watcher.start()
        started = time.perf_counter()
        report = run(config, force=True, progress=False)
        seconds = time.perf_counter() - started
        stop.set()
        watcher.join()
    return {
        "seconds": seconds,
        "stored": len(report.stored),
        "failed": report.failed,
        "worker_peak_mb": max(peaks.values(), default=float("nan")),
        "parent_peak_mb": peak_rss_mb(),
    }


def _in_subprocess(task: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.prepare", "--worker", json.dumps(task)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark subprocess {task} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _verdict(value: float, target: float) -> str:
    return "met" if value <= target else "MISSED"


def print_breakdown(ids: list[str], results: list[dict[str, Any]]) -> None:
    """Seconds per library call (rows) and case (columns); ``a > b`` rows are part of row ``a``."""
    keys = list(dict.fromkeys(key for result in results for key in result["stages"]))
    width = max(len(key) for key in [*keys, "other (between the calls above)"]) + 2
    print("\nwhere the time of prepare_case goes, seconds (one torch thread):")
    print(" " * width + "".join(f"{case_id:>17}" for case_id in ids))
    for key in keys:
        print(f"{key:<{width}}" + "".join(f"{result['stages'].get(key, 0.0):17.3f}" for result in results))
    others = [result["seconds"] - sum(v for k, v in result["stages"].items() if ">" not in k) for result in results]
    print(f"{'other (between the calls above)':<{width}}" + "".join(f"{other:17.3f}" for other in others))
    print(f"{'total prepare_case':<{width}}" + "".join(f"{result['seconds']:17.3f}" for result in results))
    print(f"{'store write (parent, not above)':<{width}}" + "".join(f"{r['write_seconds']:17.3f}" for r in results))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=3, help="phantoms to generate / cases to time (default 3)")
    parser.add_argument("--slices", type=int, nargs="+", default=[200, 250, 300], help="slices per phantom, cycled")
    parser.add_argument("--seed", type=int, default=0, help="phantom dataset seed")
    parser.add_argument("--data-root", help="time the cases of this FLARE22-layout folder instead of phantoms")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the whole run (default 2)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        task = json.loads(args.worker)
        result = measure_case(**task["case"]) if "case" in task else measure_run(**task["run"])
        print(json.dumps(result))
        return

    from data_prepare.cases import find_cases
    from data_prepare.prepare import PrepareConfig

    with tempfile.TemporaryDirectory() as folder:
        if args.data_root:
            data_root = Path(args.data_root)
        else:
            data_root = Path(folder) / "data"
            slices = [args.slices[i % len(args.slices)] for i in range(args.cases)]
            records = write_phantoms(data_root, slices, args.seed)
            print(f"generated {len(records)} phantoms (512 x 512 x {', '.join(map(str, slices))}) in "
                  f"{sum(r['seconds'] for r in records):.1f} s")  # fmt: skip
        cases, problems = find_cases(data_root)
        if problems:
            print(f"cases left out: {problems}")
        cases = cases[: args.cases]
        defaults = PrepareConfig()
        print(f"prepare_case, coarse {'x'.join(map(str, defaults.coarse_size))}, "
              f"fine {'x'.join(map(str, defaults.fine_size))}, margin {defaults.margin_mm:g} mm, "
              f"one fresh process and one torch thread per case")  # fmt: skip
        results = []
        for case in cases:
            result = _in_subprocess({"case": {"data_root": str(data_root), "case": asdict(case)}})
            results.append(result)
            x, y, z = result["size_xyz"]
            line = (f"  {case.id}: {x} x {y} x {z} (x y z, {x * y * z / 1e6:.1f} M voxels), "
                    f"crop {'x'.join(map(str, result['crop_zyx']))} (z y x): {result['seconds']:.3f} s, "
                    f"peak RSS {result['peak_mb']:.0f} MB (after imports {result['baseline_mb']:.0f} MB), "
                    f"store write {result['write_seconds']:.3f} s ({result['stored_mb']:.1f} MB)")  # fmt: skip
            print(line, flush=True)
        median = statistics.median(r["seconds"] for r in results)
        peak = max(r["peak_mb"] for r in results)
        print(f"median {median:.3f} s per case (target ≤ {TARGET_SECONDS_PER_CASE:g} s per case per worker: "
              f"{_verdict(median, TARGET_SECONDS_PER_CASE)})")  # fmt: skip
        print(f"max peak RSS {peak:.0f} MB (target ≤ {TARGET_PEAK_MB:.0f} MB per worker: "
              f"{_verdict(peak, TARGET_PEAK_MB)})")  # fmt: skip
        print_breakdown([case.id for case in cases], results)

        whole = _in_subprocess({"run": {"data_root": str(data_root), "workers": args.workers}})
        print(f"\nrun(): {whole['stored']} cases stored, {len(whole['failed'])} failed, {args.workers} workers, "
              f"{whole['seconds']:.2f} s wall (worker start-up included): "
              f"{whole['stored'] / whole['seconds']:.3f} cases/s; peak RSS: largest worker "
              f"{whole['worker_peak_mb']:.0f} MB, parent {whole['parent_peak_mb']:.0f} MB")  # fmt: skip
        for case_id, reason in whole["failed"].items():
            print(f"  FAILED {case_id}: {reason}")


if __name__ == "__main__":
    main()
