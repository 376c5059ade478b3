#!/bin/sh
# Side by side on one CT, CPU, whole processes: this product against TotalSegmentator --fast.
#   sh bench/peer.sh [--repeats 3] [--ct PATH] [--work DIR] [--warmup 1]
#
# Each round runs, one after the other and each as a fresh whole process (Python start, imports,
# weights, one case, its mask written, exit):
#   ours        sh predict.sh -i DIR -o OUT --overwrite --weights W --device cpu, W: production-size
#               nets with random weights (bench/fixtures.py random_production_weights)
#   theirs      TotalSegmentator -i CT -o OUT/ct_seg.nii.gz --ml --fast --device cpu -q, the 3 mm
#               "total" model (task 297, 117 organs) with random weights (see below)
#   ours        the same predict.sh with the shipped default model (model_weights/)
# --warmup rounds first (not counted: they fill the file cache), then --repeats rounds. Printed, and
# written to WORK/peer_timing.json: per run the wall seconds and the peak RSS of the process tree
# (ru_maxrss of RUSAGE_CHILDREN in a small probe process: the largest single process of the tree,
# not a sum over TotalSegmentator's worker processes), then per tool the medians, and the ratios
# theirs / ours. The CT (--ct, any NIfTI CT) is the 512 x 512 x 300 phantom of bench/fixtures.py
# by default, built in WORK.
#
# Why random weights: run time does not depend on what a network learned, only on its shape and
# the input's size, and neither side's trained weights are needed to time it. TotalSegmentator's
# checkpoint is made by bench/peer_checkpoint.py: nnU-Net's own planner on a small fake CT dataset
# with the total task's 118 labels gives the plans, the network is built from them with random
# weights, and the model folder goes where TotalSegmentator looks (TOTALSEG_WEIGHTS_PATH), so it
# never downloads. Random weights change only the steps that depend on the masks. In
# TotalSegmentator's --fast --ml run that is the mask's compression alone (the total task crops
# nothing: its rough cropping pass runs only with --roi_subset or for the tasks that crop); its mask
# is the argmax of a random net, most of the 117 labels in patches. Ours is one organ over the whole
# volume (the production weights' coarse stage is biased so that the fine stage runs on the largest
# crop: an upper bound). The masks' bytes are recorded with each run. On a 2-core CPU a
# TotalSegmentator run takes minutes.
#
# Downloads: only from PyPI, once, into the peer environment $PEER_VENV (default
# ~/.cache/segcore-peer/venv): torch==2.13.0 (the CPU build, from the local wheel where pip's
# find-links has one), TotalSegmentator==2.18.0, nnunetv2==2.8.1 and their dependencies; skipped
# when the environment already has them. TotalSegmentator's home (TOTALSEG_HOME_DIR) is
# WORK/totalseg_home, its config.json says "send_usage_stats": false, and nothing else touches the
# network.
# WORK (--work) defaults to ~/.cache/segcore-peer/work; the CT, the weights and the plans are kept
# there and reused by later runs. Run it on a quiet machine: the load average is printed first.
# TotalSegmentator 2.18 beside a CPU torch needs a shim for torchvision (see step 2 below).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
PEER_VENV=${PEER_VENV:-$HOME/.cache/segcore-peer/venv}
PEER_PYTHON=$PEER_VENV/bin/python
REPEATS=3
WARMUP=1
CT=
WORK=$HOME/.cache/segcore-peer/work

usage() {
    sed -n '2,/^set -eu/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}
while [ $# -gt 0 ]; do
    case $1 in
        --repeats|--ct|--work|--warmup)
            [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
            case $1 in
                --repeats) REPEATS=$2 ;;
                --ct) CT=$2 ;;
                --work) WORK=$2 ;;
                --warmup) WARMUP=$2 ;;
            esac
            shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $REPEATS$WARMUP in *[!0-9]*) echo "--repeats and --warmup take whole numbers" >&2; exit 2 ;; esac
[ "$REPEATS" -ge 1 ] || { echo "--repeats must be at least 1" >&2; exit 2; }
# relative paths are taken from the current directory
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
if [ -n "$CT" ]; then
    [ -f "$CT" ] || { echo "no CT at $CT" >&2; exit 1; }
    CT=$(cd "$(dirname "$CT")" && pwd)/$(basename "$CT")
fi
cd "$ROOT"

# 1. The peer environment.
peer_ready() {
    [ -x "$PEER_PYTHON" ] && "$PEER_PYTHON" - <<'EOF' 2>/dev/null
import importlib.metadata as metadata
import sys

wanted = {"torch": "2.13.0", "TotalSegmentator": "2.18.0", "nnunetv2": "2.8.1"}
sys.exit(any(metadata.version(name).split("+")[0] != version for name, version in wanted.items()))
EOF
}
if ! peer_ready; then
    echo "installing TotalSegmentator 2.18.0, nnunetv2 2.8.1 and torch 2.13.0 into $PEER_VENV"
    [ -x "$PEER_PYTHON" ] || python3 -m venv "$PEER_VENV"
    "$PEER_PYTHON" -m pip install --quiet torch==2.13.0 TotalSegmentator==2.18.0 nnunetv2==2.8.1
    peer_ready || { echo "the peer environment $PEER_VENV lacks the pinned versions" >&2; exit 1; }
fi

# 2. TotalSegmentator's home, kept off the network, and its random-weight model.
TOTALSEG_HOME_DIR=$WORK/totalseg_home
TOTALSEG_WEIGHTS_PATH=$TOTALSEG_HOME_DIR/nnunet/results
export TOTALSEG_HOME_DIR TOTALSEG_WEIGHTS_PATH
mkdir -p "$TOTALSEG_WEIGHTS_PATH"
cat > "$TOTALSEG_HOME_DIR/config.json" <<'EOF'
{
    "totalseg_id": "totalseg_peer_benchmark",
    "send_usage_stats": false,
    "prediction_counter": 0,
    "statistics_disclaimer_shown": true
}
EOF
# torchvision on PyPI is built against CUDA torch: beside the CPU torch its compiled ops do not load,
# and torchvision 0.28 then fails to import ("operator torchvision::nms does not exist"). nnU-Net's
# trainer lookup imports every trainer module up to the one named, timm (so torchvision) among them,
# so TotalSegmentator fails too. Where that is so, a sitecustomize.py (on PYTHONPATH for the peer's
# processes only) defines the two op schemas torchvision registers unconditionally, just before
# torchvision is first imported: it then imports as it would with a CPU build (no op of it runs).
PEER_SITE=
if ! "$PEER_PYTHON" -c 'import torchvision' > /dev/null 2>&1; then
    PEER_SITE=$WORK/peer_site
    mkdir -p "$PEER_SITE"
    cat > "$PEER_SITE/sitecustomize.py" <<'SITE'
"""Written by bench/peer.sh: torchvision's op schemas, defined just before torchvision is imported."""

import importlib.abc
import sys

_libraries = []


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            import torch

            library = torch.library.Library("torchvision", "DEF")
            for op in ("nms", "qnms"):
                library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _libraries.append(library)
        return None


sys.meta_path.insert(0, _BeforeTorchvision())
SITE
    PYTHONPATH=$PEER_SITE "$PEER_PYTHON" -c 'import torchvision' || { echo "torchvision does not import" >&2; exit 1; }
fi
# PYTHONSAFEPATH: bench/ is not put on the peer's import path (its modules' names are generic)
PYTHONSAFEPATH=1 "$PEER_PYTHON" bench/peer_checkpoint.py --work "$WORK/nnunet" --weights "$TOTALSEG_WEIGHTS_PATH" \
    --summary "$WORK/peer_model.json" > "$WORK/peer_checkpoint.log" 2>&1 \
    || { tail -n 30 "$WORK/peer_checkpoint.log" >&2; exit 1; }

# 3. The CT, our production-size random weights, the input folder predict.sh reads.
if [ -z "$CT" ]; then
    CT=$WORK/phantom_300.nii.gz
    [ -f "$CT" ] || echo "building the 512 x 512 x 300 phantom CT"
    PYTHONPATH=$ROOT "$PYTHON" -c 'import sys; from pathlib import Path; from bench.fixtures import full_size_ct
full_size_ct(Path(sys.argv[1]), 300)' "$CT"
fi
PRODUCTION=$WORK/production_weights
PYTHONPATH=$ROOT "$PYTHON" -c 'import sys; from pathlib import Path
from bench.fixtures import random_production_weights
folder = Path(sys.argv[1])
if not ((folder / "coarse.pt").exists() and (folder / "fine.pt").exists()):
    random_production_weights(folder)' "$PRODUCTION"
rm -rf "$WORK/input"
mkdir -p "$WORK/input"
ln -s "$CT" "$WORK/input/$(basename "$CT")"
"$PEER_PYTHON" -c 'import json, sys; import nibabel
image = nibabel.load(sys.argv[1])
spacing = [round(float(z), 4) for z in image.header.get_zooms()]
print(json.dumps({"path": sys.argv[1], "shape": list(image.shape), "spacing_mm": spacing}))' \
    "$CT" > "$WORK/ct.json"

# 4. The timing, alternating: ours, theirs, ours with the default model; then the medians.
DRIVER=$(cat <<'EOF'
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

spec = json.loads(sys.argv[1])
work = Path(spec["work"])
PROBE = (
    "import json, resource, subprocess, sys, time\n"
    "started = time.perf_counter()\n"
    "done = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, capture_output=True, text=True)\n"
    "wall = time.perf_counter() - started\n"
    "print(json.dumps({'wall_s': wall, 'rc': done.returncode, 'tail': (done.stdout + done.stderr)[-2000:],"
    " 'peak_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e3}))\n"
)
peer_env = dict(os.environ, VIRTUAL_ENV=spec["peer_venv"], PATH=f"{spec['peer_venv']}/bin:{os.environ['PATH']}")
peer_env.pop("PYTHONPATH", None)
if spec["peer_site"]:
    peer_env["PYTHONPATH"] = spec["peer_site"]
peer_out = work / "output_peer" / "ct_seg.nii.gz"
peer_out.parent.mkdir(exist_ok=True)


def ours(weights, output):
    return ["sh", "predict.sh", "-i", str(work / "input"), "-o", str(work / output), "--overwrite",
            "--weights", weights, "--device", "cpu"]


TOOLS = {
    "ours_production": ("ours, production-size nets, random weights", ours(spec["production"], "output_production"),
                        os.environ, work / "output_production"),
    "totalsegmentator_fast": ("TotalSegmentator --fast, random weights",
                              [f"{spec['peer_venv']}/bin/TotalSegmentator", "-i", spec["ct"], "-o", str(peer_out),
                               "--ml", "--fast", "--device", "cpu", "-q"], peer_env, peer_out),
    "ours_default": ("ours, shipped default model (model_weights/)", ours(spec["default"], "output_default"),
                     os.environ, work / "output_default"),
}


def output_bytes(path):
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files)


def run(key):
    label, command, env, output = TOOLS[key]
    done = subprocess.run([sys.executable, "-c", PROBE, *command], cwd=spec["root"], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the timing probe failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    if result["rc"] != 0:
        sys.exit(f"{label} failed (exit {result['rc']}): {' '.join(command)}\n{result['tail']}")
    return {"tool": key, "wall_s": round(result["wall_s"], 3), "peak_mb": round(result["peak_mb"]),
            "output_bytes": output_bytes(output)}


load_before = os.getloadavg()
print(f"CT {spec['ct_info']['path']}: {spec['ct_info']['shape']} voxels, {spec['ct_info']['spacing_mm']} mm")
model = spec["peer_model"]
print(f"TotalSegmentator model (random weights, nnU-Net's plan): patch {model['patch_size']} "
      f"({model['patch_axes']}) at {model['spacing']} mm, {model['n_stages']} stages {model['features_per_stage']}, "
      f"{model['classes']} labels, {model['parameters'] / 1e6:.1f} M parameters, "
      f"checkpoint {model['checkpoint_mb']} MB")
print(f"{os.cpu_count()} CPUs; load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
      " (another process on the machine moves every figure)")
for label, command, _, _ in TOOLS.values():
    print(f"  {label}: {' '.join(command)}")
runs = []
total = spec["warmup"] + spec["repeats"]
for number in range(1, total + 1):
    warmup = number <= spec["warmup"]
    name = f"warm-up {number}" if warmup else f"round {number - spec['warmup']}"
    for key in TOOLS:
        result = {"round": name, "counted": not warmup, **run(key)}
        runs.append(result)
        print(f"{name:<10} {TOOLS[key][0]:<46} {result['wall_s']:8.2f} s  peak RSS {result['peak_mb']:6d} MB  "
              f"mask {result['output_bytes'] / 1e6:.1f} MB", flush=True)

medians = {}
print(f"\nmedians of {spec['repeats']} rounds (after {spec['warmup']} warm-up):")
for key, (label, _, _, _) in TOOLS.items():
    counted = [entry for entry in runs if entry["tool"] == key and entry["counted"]]
    walls = [entry["wall_s"] for entry in counted]
    peaks = [entry["peak_mb"] for entry in counted]
    medians[key] = {"wall_s": statistics.median(walls), "peak_mb": statistics.median(peaks),
                    "wall_s_runs": walls, "peak_mb_runs": peaks}
    print(f"  {label:<46} {medians[key]['wall_s']:8.2f} s  peak RSS {medians[key]['peak_mb']:6.0f} MB   "
          f"runs {walls}")
theirs = medians["totalsegmentator_fast"]
ratios = {
    f"theirs_over_{key}": {"wall": theirs["wall_s"] / medians[key]["wall_s"],
                           "peak_rss": theirs["peak_mb"] / medians[key]["peak_mb"]}
    for key in ("ours_production", "ours_default")
}
for key, ratio in ratios.items():
    print(f"  {key.replace('_', ' ')}: time {ratio['wall']:.2f}x, peak RSS {ratio['peak_rss']:.2f}x")
load_after = os.getloadavg()
record = {
    "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
    "processor": platform.processor(), "load_average_before": load_before, "load_average_after": load_after},
    "ct": spec["ct_info"], "peer_model": model, "peer_versions": spec["peer_versions"],
    "torchvision_schemas_shim": bool(spec["peer_site"]),
    "commands": {key: command for key, (_, command, _, _) in TOOLS.items()},
    "repeats": spec["repeats"], "warmup": spec["warmup"], "runs": runs, "medians": medians, "ratios": ratios,
    "notes": ["random weights on both sides: time and memory do not depend on weight values",
              "peak_mb: ru_maxrss of RUSAGE_CHILDREN, the largest single process of the tree, not a sum"],
}
out = work / "peer_timing.json"
out.write_text(json.dumps(record, indent=2))
print(f"\nwritten to {out}")
EOF
)
PEER_VERSIONS=$("$PEER_PYTHON" -c 'import importlib.metadata as m, json
print(json.dumps({name: m.version(name) for name in ("torch", "TotalSegmentator", "nnunetv2", "numpy", "nibabel")}))')
SPEC=$("$PYTHON" -c 'import json, sys
root, work, ct, venv, repeats, warmup, versions, site = sys.argv[1:]
read = lambda name: json.loads(open(f"{work}/{name}").read())
print(json.dumps({"root": root, "work": work, "ct": ct, "peer_venv": venv, "repeats": int(repeats),
    "warmup": int(warmup), "production": f"{work}/production_weights", "default": f"{root}/model_weights",
    "ct_info": read("ct.json"), "peer_model": read("peer_model.json"), "peer_versions": json.loads(versions),
    "peer_site": site}))' "$ROOT" "$WORK" "$CT" "$PEER_VENV" "$REPEATS" "$WARMUP" "$PEER_VERSIONS" "$PEER_SITE")
exec "$PYTHON" -c "$DRIVER" "$SPEC"
