"""What the web page's answer weighs: ``POST /segment?output=bundle`` for a zipped DICOM series.

Run from the repository root::

    .venv/bin/python -m bench.bundle [--slices 300] [--work DIR] [--weights model_weights]

The 512 x 512 x ``--slices`` phantom CT of :mod:`bench.fixtures` is written as a DICOM series
(one uncompressed slice per file, kept in ``--work``) and zipped; a real uvicorn process
(:class:`inference_server.local.LocalServer`) segments it once for ``output=bundle``, as the page
asks for it (``Accept-Encoding: gzip``), and once without gzip. Printed: the upload, the bytes on
the wire each way, and the files the bundle carries, decoded (the CT as NIfTI for the viewer, the
mask, the DICOM-SEG, the RTSTRUCT, the preview), with the ratio of the bytes sent to those files
(target: at most 2). Nothing is asserted: this is not a test.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import io
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx

from bench.fixtures import full_size_ct
from bench.outputs import write_series
from inference_server.local import LocalServer
from segcore.inference.predictor import DEFAULT_WEIGHTS_DIR
from segcore.volumes import read_volume

FILES = {
    "ct_nifti_base64": "CT as NIfTI",
    "mask_nifti_base64": "mask",
    "dicom_seg_base64": "DICOM-SEG",
    "rtstruct_base64": "RTSTRUCT",
    "preview_png_base64": "preview",
}


def zipped(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, path.name)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bundle", description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--work", type=Path, help="folder for the CT and its series (default: a new temp dir)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_bundle_"))
    work.mkdir(parents=True, exist_ok=True)
    image, geometry = read_volume(full_size_ct(work / f"ct_{args.slices}.nii.gz", args.slices))
    series = write_series(work / f"series_{args.slices}", image, geometry)
    series_bytes = sum(path.stat().st_size for path in series.iterdir())
    upload = zipped(series)
    print(f"series: {args.slices} slices, {series_bytes / 1e6:.1f} MB in files, {len(upload) / 1e6:.1f} MB zipped")
    with LocalServer(args.weights, device="cpu") as url:
        for encoding in ("gzip", "identity"):
            wire, seconds, decoded = measure(url, upload, encoding)
            files = {FILES[key]: len(base64.b64decode(decoded[key])) for key in FILES if decoded.get(key)}
            carried = sum(files.values())
            print(
                f"Accept-Encoding {encoding}: {wire / 1e6:.1f} MB sent in {seconds:.1f} s for "
                f"{carried / 1e6:.1f} MB of files (ratio {wire / carried:.2f}): "
                + ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in files.items())
            )
    return 0


def measure(url: str, upload: bytes, encoding: str) -> tuple[int, float, dict]:
    """(bytes on the wire, seconds, the bundle's JSON) of one request."""
    started = time.perf_counter()
    with httpx.Client(timeout=600) as client:
        request = client.build_request(
            "POST", f"{url}/segment", params={"output": "bundle"}, headers={"Accept-Encoding": encoding},
            files={"file": ("series.zip", upload, "application/zip")},
        )  # fmt: skip
        answer = client.send(request, stream=True)
        try:
            raw = b"".join(answer.iter_raw())
        finally:
            answer.close()
    seconds = time.perf_counter() - started
    if answer.status_code != 200:
        raise SystemExit(f"bench.bundle: {answer.status_code}: {raw[:300]!r}")
    body = gzip.decompress(raw) if answer.headers.get("content-encoding") == "gzip" else raw
    return len(raw), seconds, json.loads(body)


if __name__ == "__main__":
    sys.exit(main())
