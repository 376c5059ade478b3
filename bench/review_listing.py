"""How fast the review station lists a large batch: ``GET /api/cases`` on a table of many cases.

Run from the repository root::

    .venv/bin/python -m bench.review_listing [--cases 100000] [--repeats 5] [--work DIR]

An output folder of ``--cases`` records and their ``summary.csv`` (as ``predict.sh`` leaves them:
one record per case, every organ with a volume, a tenth of the cases ``review`` and a hundredth
``failed``) is written once (kept in ``--work``); a real ``review.sh`` process serves it. Timed:
the first ``GET /api/cases`` (the table and the records read and parsed), then ``--repeats``
more with nothing changed (the listing kept), then one after a record is rewritten (read again).
Medians; the answer's size. Nothing is asserted: this is not a test.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from segcore.labels import ORGANS
from segcore.outputs.records import OrganMeasures, ResultRow, rebuild_table, write_record

REPO_ROOT = Path(__file__).resolve().parents[1]


def batch(folder: Path, cases: int) -> Path:
    """An output folder of ``cases`` records and their table (kept if its table lists them all)."""
    table = folder / "summary.csv"
    if table.is_file() and sum(1 for _ in table.open()) == cases + 1:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    organs = {name: OrganMeasures(volume_ml=100.0 + index, mean_hu=40.0 + index) for index, name in ORGANS.items()}
    for index in range(cases):
        failed, review = index % 100 == 0, index % 10 == 0
        write_record(folder, ResultRow(
            case=f"case{index:06d}", input=f"case{index:06d}_0000.nii.gz", input_dir=str(folder / "inputs"),
            mask=f"case{index:06d}.nii.gz", status="failed" if failed else "written", seconds=7.5,
            verdict="" if failed else "review" if review else "ok",
            quality_reasons=["fine-stage entropy 0.120 > 0.105"] if review and not failed else [],
            warnings=[], reason="could not be read" if failed else "", organs={} if failed else organs,
        ))  # fmt: skip
    rebuild_table(folder)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def timed_get(client: httpx.Client, url: str) -> tuple[float, int]:
    started = time.perf_counter()
    answer = client.get(url)
    answer.raise_for_status()
    return time.perf_counter() - started, len(answer.content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.review_listing", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, help="folder for the batch (default: a new temp dir)")
    args = parser.parse_args(argv)
    folder = (args.work or Path(tempfile.mkdtemp(prefix="review_listing_"))) / f"batch_{args.cases}"
    started = time.perf_counter()
    batch(folder, args.cases)
    print(f"{args.cases:,} cases in {folder} ({time.perf_counter() - started:.1f} s to write or find)")
    port = free_port()
    process = subprocess.Popen(
        ["sh", str(REPO_ROOT / "review.sh"), str(folder), "--port", str(port), "--log-level", "warning"],
        env=os.environ.copy(), stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=600) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get(f"{url}/labels").status_code == 200:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise SystemExit("bench.review_listing: review.sh did not start") from None
                    time.sleep(0.2)
            first, size = timed_get(client, f"{url}/api/cases")
            again = [timed_get(client, f"{url}/api/cases")[0] for _ in range(args.repeats)]
            write_record(folder, ResultRow.read(folder / ".records" / "case000001.json"))
            changed, _ = timed_get(client, f"{url}/api/cases")
    finally:
        process.terminate()
        process.wait(timeout=30)
    unchanged = statistics.median(again)
    print(f"GET /api/cases: first {first:.3f} s, unchanged (median of {args.repeats}) {unchanged:.3f} s, "
          f"after a record changed {changed:.3f} s; answer {size / 1e6:.1f} MB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
