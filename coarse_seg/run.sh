#!/bin/sh
# Train the coarse network with torchrun (one process per GPU, or CPU processes on Gloo):
#   sh coarse_seg/run.sh [--config FILE] [--nproc N] [--nnodes N --node-rank R --rdzv-endpoint HOST:PORT]
#                          [--resume] [--device auto|cpu|cuda] [key=value ...]
# Relative paths (here and in the config) are taken from the current directory.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODULE=coarse_seg.train
PREFLIGHT=1
. "$ROOT/segcore/runtime/launch.sh"
