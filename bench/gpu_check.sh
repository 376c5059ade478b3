#!/bin/sh
# Check a GPU machine end to end (about 10 minutes, no network): environment, CUDA tests, a tiny
# NCCL training run with validation and --resume, production-size step and inference times,
# predict.sh and the HTTP server on CUDA. One table on screen, everything in OUT/gpu_check.json.
#   sh bench/gpu_check.sh [--out DIR] [--dry-run]
# --dry-run prints the commands and checks that each exists; it runs on any machine.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m bench.gpu_check "$@"
