#!/bin/sh
# Make the default model (a candidate for model_weights/coarse.pt, fine.pt) on a CPU, starting from the shipped weights:
#   sh model_weights/recipe/train.sh [WORK_DIR]          (default WORK_DIR: runs/default_model)
# Phantoms -> store -> coarse and fine stages -> the best checkpoints to WORK_DIR/weights -> evaluate
# on the held-out phantoms with predict.sh and segcore.evaluate. See model_weights/MODEL_CARD.md.
# Resumable: run it again with the same WORK_DIR after an interruption; the phantoms and the
# store are kept, a stage with a last.pt continues from it (a finished one is skipped).
# The two stages run side by side with STAGE_THREADS threads each (default 1); logs in WORK_DIR/STAGE.log.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
WORK=${1:-runs/default_model}
RECIPE="$ROOT/model_weights/recipe"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# Training cases: random tissue values, noise, bias fields and slice thickness (--randomise-domains),
# organs moved, resized, deformed and sometimes removed, slabs and narrow fields (--vary-anatomy),
# in half of them, the back of the abdomen drawn from anatomical relations, arms, pelvis and
# bowel content (--detailed-anatomy 0.5), and, in another half drawn on its own, what patients have
# (--clinical-anatomy 0.5: lesions counted as their organ, gallbladder and stomach states, the IVC
# by contrast phase). The 10 held-out cases (val_images) stay realistic, with the default anatomy.
[ -f "$WORK/data/phantom_cases.json" ] || "$PYTHON" -m segcore.phantom --out "$WORK/data" --labeled 200 \
    --unlabeled 0 --val 10 --size medium --seed 2022 --randomise-domains --vary-anatomy --detailed-anatomy 0.5 \
    --clinical-anatomy 0.5 --workers 2 --no-progress
# The nets start from the shipped weights (train.init_weights), copied once so that the run keeps
# its start even if model_weights/ changes while it trains or before it resumes.
mkdir -p "$WORK/start"
for stage in coarse fine; do
    [ -f "$WORK/start/$stage.pt" ] || cp "$ROOT/model_weights/$stage.pt" "$WORK/start/$stage.pt"
done
sh "$ROOT/data_prepare/run.sh" --config "$RECIPE/prepare.yaml" --data-root "$WORK/data" --out "$WORK/store.lmdb"
# The two stages side by side, one thread each (the fine stage's crops come from the labels, not
# from the coarse net): on a 2-core CPU, one thread per process is the most work per core.
pids=""
stages=""
stop() {  # stop the stages and wait until they have (torchrun takes a few seconds to end its workers)
    kill $pids 2>/dev/null || true
    for pid in $pids; do wait "$pid" 2>/dev/null || true; done
}
trap 'stop; exit 130' INT TERM HUP  # the stages run in the background, where Ctrl-C does not reach them
for stage in coarse fine; do
    resume=""
    [ -f "$WORK/$stage/last.pt" ] && resume="--resume"
    echo "== train.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) ${resume:-fresh start}" >> "$WORK/$stage.log"
    OMP_NUM_THREADS=${STAGE_THREADS:-1} sh "$ROOT/${stage}_seg/run.sh" --config "$RECIPE/$stage.yaml" $resume \
        store="$WORK/store.lmdb" output_dir="$WORK/$stage" train.init_weights="$WORK/start/$stage.pt" \
        >> "$WORK/$stage.log" 2>&1 &
    pids="$pids $!"
    stages="$stages $!:$stage"
done
# A stage that fails stops the other (both resume where they stopped when train.sh runs again).
while [ -n "$pids" ]; do
    running=""
    for pid in $pids; do
        if kill -0 "$pid" 2>/dev/null; then
            running="$running $pid"
        elif ! wait "$pid"; then
            failed=$(for entry in $stages; do case $entry in "$pid":*) echo "${entry#*:}" ;; esac; done)
            stop
            echo "train.sh: the $failed stage failed: see $WORK/$failed.log (run train.sh again to resume)" >&2
            exit 1
        fi
    done
    pids=$running
    if [ -n "$pids" ]; then
        sleep 10 &
        wait $! || true  # a signal to train.sh ends the wait at once
    fi
done
trap - INT TERM HUP
# best.pt: weights and description, no optimizer state; the copies say what they must not be used for.
# They go to WORK/weights: the shipped ones are replaced by hand, once the shipping rule
# (MODEL_CARD.md) has held: cp WORK/weights/coarse.pt WORK/weights/fine.pt model_weights/
mkdir -p "$WORK/weights"
"$PYTHON" - "$WORK" "$WORK/weights" <<'PY'
import sys
from segcore.networks.checkpoint import copy_with_notice
NOTICE = ("the default model was trained on synthetic phantoms (segcore.phantom), not on patients: "
          "not for real scans (model_weights/MODEL_CARD.md)")
for stage in ("coarse", "fine"):
    copy_with_notice(f"{sys.argv[1]}/{stage}/best.pt", f"{sys.argv[2]}/{stage}.pt", NOTICE)
PY
sh "$ROOT/predict.sh" -i "$WORK/data/val_images" -o "$WORK/predictions" --weights "$WORK/weights" --overwrite
"$PYTHON" -m segcore.evaluate --pred "$WORK/predictions" --gt "$WORK/data/val_mask" --csv "$WORK/heldout_phantoms.csv"
