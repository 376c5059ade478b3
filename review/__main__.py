"""``python -m review OUTPUT_DIR [--input-dir DIR] [--port P]``: serve the review station on 127.0.0.1
(each case accepted or corrected, ``review.app``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn

from review.app import HOSTS, ReviewError, create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="review.sh", description=__doc__)
    parser.add_argument("output_dir", type=Path, help="a predict.sh output folder (with summary.csv)")
    parser.add_argument(
        "-i", "--input-dir", "--input", type=Path, help="the inputs' folder (default: the one the records name)"
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME",
        help="a further name the page may be opened under (an SSH tunnel's, a hosts entry); "
        f"{' and '.join(HOSTS)} always are",
    )  # fmt: skip
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        app = create_app(args.output_dir, args.input_dir, (*HOSTS, *args.allow_host))
    except ReviewError as error:
        print(f"review.sh: {error}", file=sys.stderr)
        return 2
    print(f"review.sh: open http://127.0.0.1:{args.port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
