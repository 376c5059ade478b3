"""The organ viewer in a real browser: time to the first slice, scrolling rate, page weight.

Run from the repository root (needs Debian's ``chromium``)::

    .venv/bin/python -m bench.viewer                    # a 512 x 512 x 300 CT, 3 repeats
    .venv/bin/python -m bench.viewer --size 256 256 120 --repeats 5

The CT is the real 3 mm abdominal CT resampled (linear) onto a finer grid of ``--size`` voxels
over the same field of view, so that it holds anatomy; the service (tiny random weights: the
mask's contents do not matter here, its grid does) segments it through the web page, as a user
would. Figures per repeat, each on a fresh page:

- ``first_slice_ms``: from the answer's arrival (``xhr.onload``) to the first frame the viewer
  drew, both halves of the work included (decoding the bundle and the upload's NIfTI, NiiVue's
  parsing, textures, the first draw);
  split into ``read_ms`` (NiiVue parsing both files), ``textures_ms`` (the volumes' textures
  made and the first slice drawn, ``gl.finish``-ed) and ``frame_ms`` (until the frame is shown);
- ``slices_per_s``: 60 steps of one axial slice, each followed by the frame that shows it;
- the vendored NiiVue file's size (the page's weight beside its few kB of own code).

Headless Chromium draws WebGL with SwiftShader, on the CPU: a machine with a GPU is faster.
Nothing is asserted; the figures are printed and appended to ``bench/results/viewer.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from inference_server.local import LocalServer
from testkit import REAL_DATA as REAL
from testkit import write_tiny_weights
from viewer import STATIC as VIEWER_STATIC

BROWSER_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
RESULTS = Path(__file__).resolve().parent / "results" / "viewer.jsonl"
SCROLL = """async (steps) => {
  const frame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));
  await frame();
  const started = performance.now();
  for (let i = 0; i < steps; i++) { viewer.step(1); await frame(); }
  return steps / ((performance.now() - started) / 1000);
}"""


def write_big_ct(path: Path, size: tuple[int, int, int]) -> None:
    """The real 3 mm CT resampled onto ``size`` (x, y, z) voxels over its own field of view."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(REAL / "abdomen_ct_3mm.nii.gz"))
    extent = [n * s for n, s in zip(image.GetSize(), image.GetSpacing())]
    spacing = [e / n for e, n in zip(extent, size)]
    origin = image.TransformContinuousIndexToPhysicalPoint(
        [0.5 * (s / o) - 0.5 for s, o in zip(spacing, image.GetSpacing())]
    )
    resampled = sitk.Resample(
        image,
        list(size),
        sitk.Transform(),
        sitk.sitkLinear,
        origin,
        spacing,
        image.GetDirection(),
        -1024,
        sitk.sitkInt16,
    )
    sitk.WriteImage(resampled, str(path), True)


def measure(url: str, ct: Path, browser, timeout_ms: int) -> dict[str, float]:
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    try:
        page.goto(url)
        page.set_input_files("#file", str(ct))
        page.click("#send")
        page.wait_for_selector("canvas[data-ready='1']", timeout=timeout_ms)
        first = float(page.get_attribute("canvas", "data-first-slice-ms"))
        parts = page.evaluate("() => viewer.timings")
        page.click("canvas")
        rate = page.evaluate(SCROLL, 60)
        return {
            "first_slice_ms": round(first, 1), "slices_per_s": round(rate, 1),
            **{name: round(value, 1) for name, value in parts.items()},
        }  # fmt: skip
    finally:
        page.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 300], metavar=("X", "Y", "Z"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout-s", type=float, default=600)
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        parser.error("no Chromium here: install Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench-viewer-") as folder:
        work = Path(folder)
        ct = work / "big_ct.nii.gz"
        write_big_ct(ct, tuple(args.size))
        upload_mb = round(ct.stat().st_size / 2**20, 1)
        weights = write_tiny_weights(work / "weights")
        runs = []
        with LocalServer(weights, max_upload_mb="2048") as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=BROWSER_ARGS)
            for repeat in range(args.repeats):
                runs.append(measure(url, ct, browser, int(args.timeout_s * 1000)))
                print(f"repeat {repeat + 1}: {runs[-1]}", flush=True)
            browser.close()
    line = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.node(), "size": args.size,
        "upload_mb": upload_mb, "load_before": [round(x, 2) for x in os.getloadavg()],
        "first_slice_ms_median": statistics.median(r["first_slice_ms"] for r in runs),
        "slices_per_s_median": statistics.median(r["slices_per_s"] for r in runs), "runs": runs,
        "niivue_bytes": (VIEWER_STATIC / "niivue" / "niivue.umd.js").stat().st_size,
        "own_code_bytes": sum(p.stat().st_size for p in VIEWER_STATIC.glob("viewer.*")),
    }  # fmt: skip
    print(json.dumps({k: v for k, v in line.items() if k != "runs"}))
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as results:
        results.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
