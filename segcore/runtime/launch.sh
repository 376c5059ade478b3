# Shared by coarse_seg/run.sh and fine_seg/run.sh (sourced, POSIX sh): starts torchrun.
# Takes --nproc N and torchrun's multi-node options; everything else goes to the stage's train module.
# Expects MODULE (e.g. coarse_seg.train) and ROOT (the repository) to be set; with PREFLIGHT set,
# runs "python -m MODULE --preflight ARGS" first and stops on its exit status.
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
NPROC=1
RDZV=""
remaining=$#
while [ "$remaining" -gt 0 ]; do
    arg=$1; shift; remaining=$((remaining - 1))
    case $arg in
        --nproc) NPROC=$1; shift; remaining=$((remaining - 1)) ;;
        --nproc=*) NPROC=${arg#*=} ;;
        --nnodes|--node-rank|--rdzv-endpoint|--rdzv-id|--rdzv-backend|--master-addr|--master-port)
            RDZV="$RDZV $arg $1"; shift; remaining=$((remaining - 1)) ;;
        --nnodes=*|--node-rank=*|--rdzv-endpoint=*|--rdzv-id=*|--rdzv-backend=*|--master-addr=*|--master-port=*)
            RDZV="$RDZV $arg" ;;
        *) set -- "$@" "$arg" ;;
    esac
done
if [ -z "$RDZV" ]; then
    RDZV="--standalone"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
for arg in "$@"; do
    case $arg in
        # Answered by one process, not by every torchrun process.
        --print-config|--help|-h) exec "$PYTHON" -m "$MODULE" "$@" ;;
    esac
done
if [ -n "${PREFLIGHT:-}" ]; then
    # One process checks what it can (config, store, run folder) before torchrun starts N of them:
    # a mistake is one line and exit status 2, not a line per process among torchrun's tracebacks.
    "$PYTHON" -m "$MODULE" --preflight "$@" || exit $?
fi
# shellcheck disable=SC2086  # RDZV holds several words on purpose
exec "$PYTHON" -m torch.distributed.run $RDZV --nproc-per-node "$NPROC" -m "$MODULE" "$@"
