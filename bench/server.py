"""Overhead of the HTTP service over a direct predictor call, and throughput under concurrency.

Run from the repository root::

    .venv/bin/python -m bench.server                       # random production-size nets
    .venv/bin/python -m bench.server --weights model_weights
    .venv/bin/python -m bench.server --slices 300 --repeats 5 --clients 4

On one full-size phantom CT (512 x 512 x ``--slices``, see :mod:`bench.fixtures`):

* direct: in this process, ``read_volume`` + ``Predictor.predict`` + ``write_volume`` (what the
  service does for a request, minus HTTP);
* server: a real uvicorn process (``inference_server/run.sh``), ``POST /segment`` of the same
  file from an HTTP client, label NIfTI back (upload, parsing, temp files, download included).

Medians of ``--repeats`` runs each, alternated, and their ratio (target ≤ 1.15), then the
throughput with ``--clients`` concurrent clients (the server's default limits: one inference
at a time on CPU). Figures are printed, never judged: this is not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.fixtures import full_size_ct, random_production_weights
from inference_server.local import LocalServer
from segcore.inference.predictor import Predictor
from segcore.volumes import read_volume, write_volume

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.15


def post(url: str, path: Path) -> tuple[float, float]:
    """Seconds for the whole request at the client, and in the handler (``X-Inference-Seconds``)."""
    started = time.perf_counter()
    with path.open("rb") as stream:
        response = httpx.post(f"{url}/segment", files={"file": (path.name, stream)}, timeout=600)
    response.raise_for_status()
    return time.perf_counter() - started, float(response.headers["X-Inference-Seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="weights folder (default: random production-size nets)")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--work", type=Path, help="keep the CT and weights here (default: a temp folder)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-server-"))
    work.mkdir(parents=True, exist_ok=True)
    ct = full_size_ct(work / f"phantom_{args.slices}.nii.gz", args.slices)
    weights = args.weights or random_production_weights(work / "weights")
    print(f"CT {ct} ({ct.stat().st_size / 1e6:.1f} MB), weights {weights}, device {args.device}")

    predictor = Predictor.from_weights(weights, args.device)

    def direct() -> float:
        started = time.perf_counter()
        image, geometry = read_volume(ct)
        prediction = predictor.predict(image, geometry)
        write_volume(work / "direct_labels.nii.gz", prediction.labels, geometry)
        return time.perf_counter() - started

    with LocalServer(weights, args.device, ready_timeout=120) as url:
        direct(), post(url, ct)  # warm-up of both
        direct_times, server_times, handler_times = [], [], []
        for _ in range(args.repeats):
            direct_times.append(direct())
            client, handler = post(url, ct)
            server_times.append(client)
            handler_times.append(handler)
        d, s = statistics.median(direct_times), statistics.median(server_times)
        print(f"direct  : median {d:.2f} s  runs {[round(t, 2) for t in direct_times]}")
        print(f"server  : median {s:.2f} s  runs {[round(t, 2) for t in server_times]}")
        print(
            f"  in the handler (upload copy, read, predict, write): median {statistics.median(handler_times):.2f} s; "
            f"the rest is transfer and multipart parsing"
        )
        print(f"overhead ratio server/direct: {s / d:.3f} (target <= {TARGET_RATIO})")

        total = args.clients * args.requests_per_client
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            latencies = [client for client, _ in pool.map(lambda _: post(url, ct), range(total))]
        elapsed = time.perf_counter() - started
        print(
            f"throughput: {args.clients} clients x {args.requests_per_client} requests: {total / elapsed:.3f} req/s, "
            f"{elapsed:.1f} s in all, latency median {statistics.median(latencies):.1f} s, max {max(latencies):.1f} s"
        )


if __name__ == "__main__":
    sys.exit(main())
