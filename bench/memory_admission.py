"""Peak memory of one service request against its input's voxels: the service's admission model.

Run from the repository root::

    .venv/bin/python -m bench.memory_admission                          # model_weights/, 3 sizes
    .venv/bin/python -m bench.memory_admission --slices 100 300 600 1200 2000 --series 100 300 600

For each size a fresh subprocess loads the predictor (as the service does at start-up), resets
its peak-memory mark (``/proc/self/clear_refs``), then does what ``POST /segment?output=bundle``
does: read the input, segment it, make the mask, the preview and the record
(:func:`segcore.outputs.case.build_case`); for a DICOM series also the DICOM-SEG, the RTSTRUCT,
the CT as NIfTI for the page's viewer and the gzip-ed JSON bundle of them all. The request's cost
is the process's peak resident memory during that work minus its resident memory before it.
The CTs are full-size phantoms (512 x 512 x ``--slices``, :mod:`bench.fixtures`) as NIfTI, each
also with its x and z axes swapped in the file (``sitk.PermuteAxes``: the same scan on a grid that
is not the canonical one, so reorienting it copies the volume), and as a volume of air (-1000 HU
everywhere) on the same grid (no organ: a poor first stage's box covers the whole volume); and,
for the sizes in ``--series``, the same CT as a DICOM series of uncompressed slices.

Printed: every request's cost, then for the service's model (``memory_base_mb`` +
``memory_bytes_per_voxel`` x voxels, :class:`inference_server.settings.Settings`) its estimate
over each measured cost: at least 1 (never under) and at most 1.5 is the target. Figures are
printed, never judged: this is not a test.
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
from bench.outputs import write_series
from inference_server.admission import MemoryModel
from inference_server.settings import Settings
from segcore.volumes import read_volume

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUEST = r"""
import json, sys, tempfile, time
from pathlib import Path
from segcore.outputs.case import build_case
from segcore.volumes import nifti_bytes_for_viewing, read_volume
from segcore.inference.predictor import Predictor

def status(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024

path, weights = Path(sys.argv[1]), sys.argv[2]
series = path.is_dir()
if series:
    from inference_server.app import answer_of
predictor = Predictor.from_weights(weights, "cpu", "auto", verify=True)
with open("/proc/self/clear_refs", "w") as stream:
    stream.write("5")  # the peak (VmHWM) starts again from the current resident memory
before, started = status("VmRSS"), time.perf_counter()
image, geometry = read_volume(path)
prediction = predictor.predict(image, geometry)
kinds = {"mask", "preview", "seg", "rtstruct"} if series else {"mask", "preview"}
with tempfile.TemporaryDirectory() as staging:
    made = build_case(Path(staging), kinds, case="ct", input_name=path.name, source=path,
                      prediction=prediction, image=image, geometry=geometry, notice=predictor.notice)
    if series:  # the bundle a zipped series gets: the CT as NIfTI for the viewer, every file, gzip-ed JSON
        answer = answer_of("bundle", made, path.name, nifti_bytes_for_viewing(image, geometry), True)
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
    parser.add_argument("--series", type=int, nargs="*", default=[100], help="sizes also measured as a DICOM series")
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "model_weights")
    parser.add_argument("--work", type=Path, help="folder for the CTs (default: a new temp dir)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="memory_admission_"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, int, int]] = []
    print(f"{'input':<10}{'slices':>7}{'voxels':>14}{'before MB':>11}{'peak MB':>9}{'request MB':>12}"
          f"{'B/voxel':>9}{'s':>7}")  # fmt: skip
    for slices in sorted(set(args.slices) | set(args.series)):
        canonical = full_size_ct(work / f"ct_{slices}.nii.gz", slices)
        inputs = {}
        if slices in args.slices:
            permuted = work / f"ct_{slices}_permuted.nii.gz"
            if not permuted.exists():
                sitk.WriteImage(sitk.PermuteAxes(sitk.ReadImage(str(canonical)), [2, 1, 0]), str(permuted))
            air = work / f"air_{slices}.nii.gz"
            if not air.exists():
                reference = sitk.ReadImage(str(canonical))
                blank = sitk.Image(reference.GetSize(), sitk.sitkInt16) - 1000
                blank.CopyInformation(reference)
                sitk.WriteImage(blank, str(air))
            inputs.update(canonical=canonical, permuted=permuted, air=air)
        if slices in args.series:
            inputs["series"] = write_series(work / f"series_{slices}", *read_volume(canonical))
        for kind, path in inputs.items():
            figures = measure(path, args.weights)
            cost = figures["peak"] - figures["before"]
            rows.append((kind, figures["voxels"], cost))
            print(
                f"{kind:<10}{slices:>7}{figures['voxels']:>14,}{figures['before'] / 1e6:>11.1f}"
                f"{figures['peak'] / 1e6:>9.1f}{cost / 1e6:>12.1f}{cost / figures['voxels']:>9.2f}"
                f"{figures['seconds']:>7.1f}",
                flush=True,
            )
    voxels, costs = np.array([(v, c) for _, v, c in rows], dtype=np.float64).T
    slope, constant = np.polyfit(voxels, costs, 1) if len(set(voxels)) > 1 else (costs[0] / voxels[0], 0.0)
    print(f"least-squares line through every point: {slope:.2f} bytes per voxel + {constant / 2**20:.1f} MiB")
    settings = Settings()
    model = MemoryModel(settings.memory_bytes_per_voxel, settings.memory_base_mb * 2**20, 0, 0)
    ratios = [model.need(int(v)) / c for v, c in zip(voxels, costs, strict=True)]
    print(
        f"the service's model ({settings.memory_base_mb:g} MiB + {settings.memory_bytes_per_voxel:g} B/voxel) over "
        f"the measured costs: {min(ratios):.2f}-{max(ratios):.2f}"
        + "".join(f"\n  {kind:<10}{int(v):>14,} {ratio:.2f}" for (kind, v, _), ratio in zip(rows, ratios, strict=True))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
