"""Check a GPU machine end to end, in one command of at most about 10 minutes, no network::

    sh bench/gpu_check.sh [--out DIR] [--dry-run]

Steps, each a real command run from the repository root (``{py}`` is the venv's Python):

1. ``environment``: torch, CUDA, cuDNN, NCCL versions, device name and memory.
2. ``cuda tests``: the test suite's CUDA tests (``pytest -k cuda``; they skip on a CPU).
3. ``tiny data``, ``tiny store``: small phantoms and their store (``data_prepare`` tiny config).
4. ``nccl train``: ``coarse_seg/run.sh --nproc 1 --device cuda`` (torchrun; the process joins a
   ``cpu:gloo,cuda:nccl`` group even alone, so validation sums and checkpoint gathers take the
   NCCL path), stopped after a few steps with validation on; ``nccl resume`` finishes it with
   ``--resume``; ``nccl cps``: a semi-supervised run (confidence-aware CPS, Fourier mixing) on
   the same store.
5. ``network steps``: ``bench.networks --device cuda`` (production-size forward and training
   step times, fp32 and fp16 autocast, peak memory); ``training step``: the engine's real step;
   ``loader``: ``bench.loader`` with the augmentation on the GPU (does the store keep it fed?).
6. ``inference``: ``bench.inference --device cuda`` on the 512x512x300 CT, production-size nets
   (target: at most 1 s end to end without file reading and writing; it reports both).
7. ``predict.sh``: the embedded sample with ``--device cuda``; ``server``: the HTTP service on
   CUDA answering ``/segment`` (``bench.server``).

It prints one table (step, exit status, seconds, last line of output) and writes everything,
with each step's output tail, to ``OUT/gpu_check.json``. ``--dry-run`` runs nothing: it prints
the commands and checks that each exists (scripts present, modules importable, every option
each command passes listed in its ``--help``); the test suite runs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT = """
import json, torch
cuda = torch.cuda.is_available()
props = torch.cuda.get_device_properties(0) if cuda else None
print(json.dumps({
    "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
    "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
    "device": props.name if cuda else None, "memory_gib": round(props.total_memory / 2**30, 1) if cuda else None,
    "devices": torch.cuda.device_count(),
}))
raise SystemExit(0 if cuda else 1)
"""


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    timeout_s: int


def steps(python: str, work: Path) -> list[Step]:
    data, store, runs = work / "data", work / "store.lmdb", work / "runs"
    tiny = ("--config", "coarse_seg/config.tiny.yaml", f"store={store}", "train.val_every=2")
    train = ("sh", "coarse_seg/run.sh", "--nproc", "1", "--device", "cuda", *tiny)
    cacps = (
        "semi.enabled=true", "semi.weak_strong=true", "semi.fourier_confidence=true", "augment.fourier_sources=all",
    )  # fmt: skip
    return [
        Step("environment", (python, "-c", ENVIRONMENT), 60),
        Step("cuda tests", (python, "-m", "pytest", "-q", "-k", "cuda", "tests"), 240),
        Step(
            "tiny data",
            (
                python,
                "-m",
                "segcore.phantom",
                "--out",
                str(data),
                "--labeled",
                "6",
                "--unlabeled",
                "4",
                "--val",
                "2",
                "--size",
                "small",
                "--seed",
                "0",
                "--no-progress",
            ),
            60,
        ),  # fmt: skip
        Step(
            "tiny store",
            (
                "sh",
                "data_prepare/run.sh",
                "--config",
                "data_prepare/config.tiny.yaml",
                "--data-root",
                str(data),
                "--out",
                str(store),
            ),
            60,
        ),  # fmt: skip
        Step("nccl train", (*train, f"output_dir={runs / 'coarse'}", "train.epochs=4", "train.max_steps=5"), 120),
        Step("nccl resume", (*train, "--resume", f"output_dir={runs / 'coarse'}", "train.epochs=4"), 120),
        Step("nccl cps", (*train, f"output_dir={runs / 'cacps'}", "train.epochs=2", *cacps), 120),
        Step("network steps", (python, "-m", "bench.networks", "--device", "cuda", "--quick"), 240),
        Step("training step", (python, "-m", "bench.training_step", "--device", "cuda"), 240),
        Step(
            "loader",
            (
                python,
                "-m",
                "bench.loader",
                "--device",
                "cuda",
                "--cases",
                "4",
                "--batches",
                "10",
                "--work",
                str(work / "loader"),
            ),
            300,
        ),  # fmt: skip
        Step(
            "inference",
            (python, "-m", "bench.inference", "--device", "cuda", "--repeats", "3", "--work", str(work / "inference")),
            300,
        ),  # fmt: skip
        Step("predict.sh", ("sh", "predict.sh", "--device", "cuda"), 120),
        Step(
            "server",
            (
                python,
                "-m",
                "bench.server",
                "--device",
                "cuda",
                "--repeats",
                "1",
                "--clients",
                "2",
                "--requests-per-client",
                "1",
                "--work",
                str(work / "inference"),
            ),
            300,
        ),  # fmt: skip
    ]


def check_exists(step: Step) -> list[str]:
    """Problems that would stop ``step`` before it starts: a missing script, module or option."""
    argv, problems = step.argv, []
    if argv[0] == "sh":
        if not (REPO_ROOT / argv[1]).is_file():
            problems.append(f"{argv[1]} does not exist")
        return problems
    if argv[1] == "-c":
        return problems
    module = argv[2]
    if importlib.util.find_spec(module) is None:
        return [f"module {module} is not importable"]
    if module == "pytest":
        return problems
    help_text = subprocess.run(
        [argv[0], "-m", module, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    ).stdout
    for option in (arg for arg in argv[3:] if arg.startswith("--")):
        if option not in help_text:
            problems.append(f"{module} has no option {option}")
    return problems


def run_step(step: Step, log_dir: Path) -> dict:
    started = time.perf_counter()
    try:
        result = subprocess.run(
            step.argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=step.timeout_s
        )  # fmt: skip
        status, output = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired as error:
        status, output = "timeout", (error.stdout or b"").decode(errors="replace") if error.stdout else ""
    seconds = time.perf_counter() - started
    (log_dir / f"{step.name.replace(' ', '_')}.log").write_text(output)
    lines = [line for line in output.splitlines() if line.strip()]
    return {"step": step.name, "command": " ".join(step.argv), "status": status, "seconds": round(seconds, 1),
            "last_line": lines[-1][:160] if lines else "", "tail": lines[-40:]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "gpu_check", help="work and result folder")
    parser.add_argument("--dry-run", action="store_true", help="print and check the commands, run nothing")
    args = parser.parse_args(argv)
    work = args.out.resolve()
    plan = steps(sys.executable, work)
    if args.dry_run:
        failures = 0
        for step in plan:
            problems = check_exists(step)
            failures += bool(problems)
            shown = " ".join(step.argv).replace(ENVIRONMENT, "<environment report>")
            print(f"[{'ok' if not problems else 'MISSING'}] {step.name}: {shown}")
            for problem in problems:
                print(f"    {problem}")
        print(f"gpu_check --dry-run: {len(plan)} steps, {failures} with problems")
        return 1 if failures else 0

    work.mkdir(parents=True, exist_ok=True)
    results = []
    for step in plan:
        print(f"gpu_check: {step.name} ...", flush=True)
        results.append(run_step(step, work))
        if step.name == "environment" and results[-1]["status"] != 0:
            print("gpu_check: no CUDA device: nothing else to check")
            break
    width = max(len(r["step"]) for r in results)
    print(f"\n{'step':<{width}}  status  seconds  last line")
    for r in results:
        print(f"{r['step']:<{width}}  {str(r['status']):>6}  {r['seconds']:>7.1f}  {r['last_line']}")
    (work / "gpu_check.json").write_text(json.dumps(results, indent=1))
    print(f"\ngpu_check: table and output tails in {work / 'gpu_check.json'}")
    return 0 if all(r["status"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
