#!/bin/sh
# Segment a CT, a DICOM series or every CT in a folder with the two-stage model (see predict/batch.py):
#   sh predict.sh -i INPUT -o OUTPUT_DIR [--weights DIR] [--device auto|cpu|cuda|cuda:N]
#                 [--precision auto|fp32|fp16|bf16] [--nproc N] [--stats] [--overwrite] [--strict]
#                 [--output-type nifti|dicom-seg|rtstruct|both[,...]] [--organs NAME,...] [--preview]
#                 [--body-region] [--no-progress]
#   sh predict.sh [--weights DIR]     # no -i/-o: segment the embedded sample CT and score it
# --nproc N (N > 1), or torchrun's multi-node options (--nnodes, --node-rank, --rdzv-endpoint, ...),
# start the processes with torchrun (segcore/runtime/launch.sh); each takes every N-th case.
# Relative paths are taken from the current directory.
set -eu
ROOT=$(cd "$(dirname "$0")" && pwd)
NPROC=1
TORCHRUN=0
previous=""
for arg in "$@"; do
    if [ "$previous" = "--nproc" ]; then
        NPROC=$arg
    fi
    case $arg in
        --nproc=*) NPROC=${arg#*=} ;;
        --nnodes|--nnodes=*|--node-rank|--node-rank=*|--rdzv-endpoint|--rdzv-endpoint=*|--master-addr|--master-addr=*)
            TORCHRUN=1 ;;
    esac
    previous=$arg
done
if [ "$previous" = "--nproc" ]; then
    NPROC=""
fi
case $NPROC in
    ''|*[!0-9]*|0) echo "predict.sh: --nproc takes a positive whole number, not '$NPROC'" >&2; exit 2 ;;
esac
if [ "$NPROC" -gt 1 ] || [ "$TORCHRUN" = 1 ]; then
    # torchrun reports any non-zero exit as a crash with a traceback; the processes write the batch's
    # exit status to a file instead, and this script exits with it.
    STATUS_FILE=$(mktemp "${TMPDIR:-/tmp}/predict-status.XXXXXX")
    trap 'rm -f "$STATUS_FILE"' EXIT
    trap 'exit 130' INT TERM
    # Each process gets its share of this machine's cores (unless set); torchrun would give each one thread.
    cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
    share=$((cores / NPROC))
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((share > 0 ? share : 1))}
    MODULE=predict.batch
    set -- "$@" --status-file "$STATUS_FILE"
    code=0
    ( . "$ROOT/segcore/runtime/launch.sh" ) || code=$?
    if [ "$code" -ne 0 ]; then
        exit "$code"
    fi
    status=$(cat "$STATUS_FILE")
    exit "${status:-1}"
fi
# One process: no torchrun, and no --nproc for the Python entry.
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
remaining=$#
while [ "$remaining" -gt 0 ]; do
    arg=$1; shift; remaining=$((remaining - 1))
    case $arg in
        --nproc) shift; remaining=$((remaining - 1)) ;;
        --nproc=*) ;;
        *) set -- "$@" "$arg" ;;
    esac
done
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m predict.batch "$@"
