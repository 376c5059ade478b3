#!/bin/sh
# Prepare the LMDB case store:
#   sh data_prepare/run.sh [--config FILE] [--data-root DIR] [--out DIR] [--workers N] [--coarse-weights FILE]
#                          [--force] [key=value ...]
# Relative paths (here and in the config) are taken from the current directory.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m data_prepare "$@"
