#!/bin/sh
# Review a predict.sh output folder in the browser (read-only, on 127.0.0.1 only):
#   sh review.sh OUTPUT_DIR [--input-dir DIR] [--port 8765]
# lists the cases of summary.csv, fail and review first; a click opens the CT with its mask.
set -eu
ROOT=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m review "$@"
