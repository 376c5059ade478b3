"""Cost of the synthetic phantom generator: generation and write time, peak memory.

Run from the repository root::

    .venv/bin/python -m bench.phantom_generation                 # 512 x 512 x 250, 3 repeats
    .venv/bin/python -m bench.phantom_generation --slices 350 --repeats 1

One full-size case is generated on an imposed clinical grid (512 x 512 in-plane, 0.8 mm,
1.25 mm slices, stored as NIfTI from DICOM usually is: x and y flipped), ``--repeats`` times
(the median is reported), then written as ``.nii.gz`` with :func:`segcore.volumes.write_volume`
(image and mask). Small cases (the test size) are timed too. Peak resident memory is this
process's ``ru_maxrss``. Figures are printed, never judged: this is not a test.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

from segcore.phantom import generate_case
from segcore.phantom.generate import default_threads
from segcore.volumes import write_volume
from segcore.volumes.geometry import Geometry


def clinical_grid(slices: int) -> Geometry:
    """512 x 512 x ``slices``, 0.8 x 0.8 x 1.25 mm, x and y flipped (the usual NIfTI from DICOM)."""
    spacing = (0.8, 0.8, 1.25)
    return Geometry(
        size=(512, 512, slices),
        spacing=spacing,
        origin=(204.4, 204.4 - 30.0, -400.0),
        direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
    )


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=250, help="slices of the full-size case")
    parser.add_argument("--repeats", type=int, default=3, help="timed generations of the full-size case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", type=int, default=20, help="small cases to time")
    args = parser.parse_args()

    small_times = []
    for seed in range(args.small):
        started = time.perf_counter()
        generate_case(seed, "small")
        small_times.append(time.perf_counter() - started)
    print(f"small cases: {args.small} generated, median {statistics.median(small_times) * 1000:.0f} ms, "
          f"max {max(small_times) * 1000:.0f} ms")  # fmt: skip

    geometry = clinical_grid(args.slices)
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        phantom = generate_case(args.seed, "full", geometry=geometry)
        times.append(time.perf_counter() - started)
    z, y, x = phantom.image.shape
    print(f"full case {x} x {y} x {z} ({x * y * z / 1e6:.0f} M voxels), {default_threads()} threads: "
          f"generate median {statistics.median(times):.2f} s ({', '.join(f'{t:.2f}' for t in times)})")  # fmt: skip
    meta = phantom.meta
    print(f"  organs present: {len(meta['organs_present'])}, "
          f"liver {meta['organ_volumes_ml']['liver']:.0f} mL, phase {meta['domain']['phase']}")  # fmt: skip

    with tempfile.TemporaryDirectory() as folder:
        image_path, mask_path = Path(folder) / "case_0000.nii.gz", Path(folder) / "case.nii.gz"
        started = time.perf_counter()
        write_volume(image_path, phantom.image, phantom.geometry)
        image_seconds = time.perf_counter() - started
        started = time.perf_counter()
        write_volume(mask_path, phantom.label, phantom.geometry)
        mask_seconds = time.perf_counter() - started
        print(f"  write .nii.gz: image {image_seconds:.2f} s ({image_path.stat().st_size / 1e6:.0f} MB), "
              f"mask {mask_seconds:.2f} s ({mask_path.stat().st_size / 1e6:.1f} MB)")  # fmt: skip
    print(f"peak resident memory: {_peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
