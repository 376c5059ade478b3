"""Peak memory of one service request against its input's voxels: the service's admission model.

Run from the repository root::

    .venv/bin/python -m bench.memory_admission                          # model_weights/, 3 sizes
    .venv/bin/python -m bench.memory_admission --slices 100 300 600 --weights model_weights

For each size a fresh subprocess loads the predictor (as the service does at start-up), resets
its peak-memory mark (``/proc/self/clear_refs``), then does what ``POST /segment?output=bundle``
does for a NIfTI upload: read the file, segment it, make the mask, the preview and the record
(:func:`segcore.outputs.case.build_case`). The request's cost is the process's peak resident
memory during that work minus its resident memory before it. The CTs are full-size phantoms
(512 x 512 x ``--slices``, :mod:`bench.fixtures`), each also with its x and z axes swapped in
the file (``sitk.PermuteAxes``: the same scan on a grid that is not the canonical one, so
reorienting it copies the volume), and as a volume of air (-1000 HU everywhere) on the same
grid: no organ, which costs most (a 1024 x 1024 x 1000 one, a 9 MB upload, took 15.5 GB: the
whole volume is worked on, where a scan's organs cover part of it). A least-squares line through
the points of the dearest kind
gives bytes per voxel and a constant: :data:`inference_server.settings.Settings`'
``memory_bytes_per_voxel`` and ``memory_base_mb`` come from it. Figures are printed, never
judged: this is not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from bench.fixtures import full_size_ct

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUEST = r"""
import json, sys, tempfile, time
from pathlib import Path
from segcore.outputs.case import build_case
from segcore.volumes import read_volume
from segcore.inference.predictor import Predictor

def status(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024

path, weights = Path(sys.argv[1]), sys.argv[2]
predictor = Predictor.from_weights(weights, "cpu", "auto", verify=True)
with open("/proc/self/clear_refs", "w") as stream:
    stream.write("5")  # the peak (VmHWM) starts again from the current resident memory
before, started = status("VmRSS"), time.perf_counter()
image, geometry = read_volume(path)
prediction = predictor.predict(image, geometry)
with tempfile.TemporaryDirectory() as staging:
    build_case(Path(staging), {"mask", "preview"}, case="ct", input_name=path.name, source=path,
               prediction=prediction, image=image, geometry=geometry, notice=predictor.notice)
print(json.dumps({"voxels": int(image.size), "before": before, "peak": status("VmHWM"),
                  "seconds": time.perf_counter() - started}))
"""


def measure(path: Path, weights: Path) -> dict:
    """One request's figures, from a fresh subprocess."""
    done = subprocess.run(
        [sys.executable, "-c", REQUEST, str(path), str(weights)], cwd=REPO_ROOT, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.memory_admission", description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[100, 300, 600])
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "model_weights")
    parser.add_argument("--work", type=Path, help="folder for the CTs (default: a new temp dir)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="memory_admission_"))
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[tuple[int, int]]] = {"canonical": [], "permuted": [], "air": []}
    print(f"{'grid':<10}{'slices':>7}{'voxels':>14}{'before MB':>11}{'peak MB':>9}{'request MB':>12}"
          f"{'B/voxel':>9}{'s':>7}")  # fmt: skip
    for slices in args.slices:
        canonical = full_size_ct(work / f"ct_{slices}.nii.gz", slices)
        permuted = work / f"ct_{slices}_permuted.nii.gz"
        if not permuted.exists():
            sitk.WriteImage(sitk.PermuteAxes(sitk.ReadImage(str(canonical)), [2, 1, 0]), str(permuted))
        air = work / f"air_{slices}.nii.gz"
        if not air.exists():
            reference = sitk.ReadImage(str(canonical))
            blank = sitk.Image(reference.GetSize(), sitk.sitkInt16) - 1000
            blank.CopyInformation(reference)
            sitk.WriteImage(blank, str(air))
        for grid, path in (("canonical", canonical), ("permuted", permuted), ("air", air)):
            figures = measure(path, args.weights)
            cost = figures["peak"] - figures["before"]
            rows[grid].append((figures["voxels"], cost))
            print(
                f"{grid:<10}{slices:>7}{figures['voxels']:>14,}{figures['before'] / 1e6:>11.1f}"
                f"{figures['peak'] / 1e6:>9.1f}{cost / 1e6:>12.1f}{cost / figures['voxels']:>9.2f}"
                f"{figures['seconds']:>7.1f}",
                flush=True,
            )
    dearer = max(rows.values(), key=lambda points: sum(cost for _, cost in points))
    voxels, costs = np.array(dearer, dtype=np.float64).T
    slope, constant = np.polyfit(voxels, costs, 1) if len(rows) > 1 else (costs[0] / voxels[0], 0.0)
    worst = max(costs / voxels)
    print(f"fit: {slope:.2f} bytes per voxel + {constant / 1e6:.1f} MB; largest measured ratio {worst:.2f} B/voxel")
    print(f"1024x1024x1000 (1 Gi voxels) would need {(slope * 2**30 + constant) / 1e9:.2f} GB by the fit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
