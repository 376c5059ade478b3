#!/bin/sh
# Re-make the default model (model_weights/coarse.pt, fine.pt) from scratch on a CPU:
#   sh model_weights/recipe/train.sh [WORK_DIR]          (default WORK_DIR: runs/default_model)
# Phantoms -> store -> coarse stage -> fine stage -> copy the best checkpoints -> evaluate on
# the held-out phantoms with predict.sh and segcore.evaluate. See model_weights/MODEL_CARD.md.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
WORK=${1:-runs/default_model}
RECIPE="$ROOT/model_weights/recipe"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

"$PYTHON" -m segcore.phantom --out "$WORK/data" --labeled 40 --unlabeled 0 --val 10 --size medium --seed 2022
sh "$ROOT/data_prepare/run.sh" --config "$RECIPE/prepare.yaml" --data-root "$WORK/data" --out "$WORK/store.lmdb"
sh "$ROOT/coarse_seg/run.sh" --config "$RECIPE/coarse.yaml" store="$WORK/store.lmdb" output_dir="$WORK/coarse"
sh "$ROOT/fine_seg/run.sh" --config "$RECIPE/fine.yaml" store="$WORK/store.lmdb" output_dir="$WORK/fine"
cp "$WORK/coarse/best.pt" "$ROOT/model_weights/coarse.pt"  # best.pt: weights and description, no optimizer state
cp "$WORK/fine/best.pt" "$ROOT/model_weights/fine.pt"
sh "$ROOT/predict.sh" -i "$WORK/data/val_images" -o "$WORK/predictions" --weights "$ROOT/model_weights" --overwrite
"$PYTHON" -m segcore.evaluate --pred "$WORK/predictions" --gt "$WORK/data/val_mask" --csv "$WORK/heldout_phantoms.csv"
