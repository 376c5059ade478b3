#!/bin/sh
# Segment a CT, a DICOM series or every CT in a folder with the two-stage model (see predict/batch.py):
#   sh predict.sh -i INPUT -o OUTPUT_DIR [--weights DIR] [--device auto|cpu|cuda|cuda:N]
#                 [--precision auto|fp32|fp16|bf16] [--nproc N] [--stats] [--overwrite] [--strict]
#                 [--output-type nifti|dicom-seg|rtstruct|both[,...]] [--organs NAME,...] [--preview]
#                 [--body-region] [--no-progress]
#   sh predict.sh [--weights DIR]     # no -i/-o: segment the embedded sample CT and score it
# --nproc N (N > 1), or torchrun's multi-node options (--nnodes, --node-rank, --rdzv-endpoint, ...),
# start the processes with torchrun (segcore/runtime/launch.sh); each takes every N-th case.
# Ctrl-C stops them all.
# Relative paths are taken from the current directory.
# The same program as the segcore-predict command (segcore/runtime/commands.py), with this checkout's .venv.
set -eu
ROOT=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m segcore.runtime.commands predict "$@"
