"""Batch prediction over a folder of CTs, in one process or sharded over torchrun processes.

    sh predict.sh -i INPUT_DIR -o OUTPUT_DIR [--weights DIR] [--device auto|cpu|cuda]
                  [--precision auto|fp32|fp16|bf16] [--nproc N] [--stats] [--overwrite]
    sh predict.sh                # the embedded sample: see segcore.sample

Cases are every ``.nii``/``.nii.gz`` file and every folder (one DICOM series each) directly in
INPUT_DIR, sorted by name; hidden entries, other files and OUTPUT_DIR itself are passed over.
Output names: ``<id>_0000.nii.gz`` -> ``<id>.nii.gz`` (FLARE), anything else keeps its stem,
plus ``.nii.gz``. Each mask carries exactly its input's size, spacing, origin and direction.
Existing outputs are kept (the case is skipped) unless ``--overwrite``; writes are atomic, so an
interrupted run leaves whole files only and a re-run finishes the rest. ``--stats`` also writes
``<id>.json`` (per-organ volume in mL, mean HU, bounding box; the crop box; warnings; timings).

With ``--nproc N`` (``python -m torch.distributed.run --standalone --nproc-per-node N -m
segcore.predict ...``), rank ``r`` of ``W`` takes ``sorted_cases[r::W]``, so every case is
written exactly once; rank 0 gathers the results and prints the summary. Each rank uses its
own GPU (NCCL) or, on CPUs (Gloo), ``OMP_NUM_THREADS`` threads (predict.sh gives each process its
share of the cores unless ``OMP_NUM_THREADS`` is set).

A case that cannot be read or segmented is reported with its file and the reason and the batch
goes on. Exit status: 0 when every case is written or skipped, 1 when any case failed, 2 for a
usage error (bad folders, missing or bad weights).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from segcore import distributed
from segcore.io import VolumeError, case_stem, is_nifti, write_text_atomic, write_volume
from segcore.postprocess import organ_statistics
from segcore.predictor import PRECISIONS, Predictor

CHANNEL_SUFFIX = "_0000"
"""FLARE / nnU-Net image names end with the channel index: ``<id>_0000.nii.gz``."""
DISTRIBUTED_TIMEOUT_MINUTES = 24 * 60
"""Ranks wait for each other only at the end; a long batch must not time the wait out."""


@dataclass(frozen=True)
class Case:
    """One input: a NIfTI file or a DICOM folder, and the name of its mask."""

    name: str
    path: Path
    output_name: str

    @property
    def case_id(self) -> str:
        return self.output_name.removesuffix(".nii.gz")


@dataclass
class CaseResult:
    """What happened to one case: ``written``, ``skipped`` (its output existed) or ``failed``."""

    name: str
    output_name: str
    status: str
    seconds: float = 0.0
    reason: str = ""
    organs: int = 0
    warnings: list[str] = field(default_factory=list)
    rank: int = 0


def output_name(path: Path) -> str:
    """``<id>_0000.nii.gz`` -> ``<id>.nii.gz``; other files and folders keep their stem, plus ``.nii.gz``."""
    stem = case_stem(path)
    return f"{stem.removesuffix(CHANNEL_SUFFIX) if stem.endswith(CHANNEL_SUFFIX) else stem}.nii.gz"


def find_cases(input_dir: Path, output_dir: Path | None = None) -> tuple[list[Case], dict[str, str], list[str]]:
    """The cases of ``input_dir``, sorted by name.

    Returns:
        ``(cases, problems, ignored)``: the cases; ``{name: reason}`` for inputs that cannot be
        written (two inputs mapping to one output name); names of entries passed over.
    """
    cases, ignored = [], []
    excluded = output_dir.resolve() if output_dir is not None else None
    for path in sorted(input_dir.iterdir()):
        if path.name.startswith(".") or (path.is_dir() and path.resolve() == excluded):
            continue
        if path.is_dir() or (path.is_file() and is_nifti(path)):
            cases.append(Case(path.name, path, output_name(path)))
        else:
            ignored.append(path.name)
    claimed: dict[str, list[Case]] = {}
    for case in cases:
        claimed.setdefault(case.output_name, []).append(case)
    problems = {}
    for name, owners in claimed.items():
        if len(owners) > 1:
            for case in owners:
                others = ", ".join(other.name for other in owners if other is not case)
                problems[case.name] = f"{case.path}: output name {name} is also claimed by {others}"
    return [case for case in cases if case.name not in problems], problems, ignored


def _write_json(path: Path, content: dict) -> None:
    write_text_atomic(path, json.dumps(content, indent=2) + "\n")


def predict_case(predictor: Predictor, case: Case, output_dir: Path, *, stats: bool) -> CaseResult:
    """Segment one case and write its mask (and statistics); failures become a ``failed`` result."""
    started = time.perf_counter()
    try:
        prediction, image, geometry = predictor.predict_file(case.path)
        write_volume(output_dir / case.output_name, prediction.labels, geometry)
        statistics = organ_statistics(prediction.labels, image, geometry)
        if stats:
            _write_json(
                output_dir / f"{case.case_id}.json",
                {
                    "case": case.case_id,
                    "input": case.name,
                    "organs": statistics,
                    "crop_box_voxels": prediction.box,
                    "warnings": prediction.warnings,
                    "timings_s": {name: round(value, 4) for name, value in prediction.timings.items()},
                },
            )
    except VolumeError as error:
        return CaseResult(case.name, case.output_name, "failed", time.perf_counter() - started, str(error))
    except Exception as error:  # one bad case must not stop the batch; report it with its type
        reason = f"{case.path}: {type(error).__name__}: {error}"
        return CaseResult(case.name, case.output_name, "failed", time.perf_counter() - started, reason)
    seconds = time.perf_counter() - started
    return CaseResult(
        case.name, case.output_name, "written", seconds, organs=len(statistics), warnings=prediction.warnings
    )


def predict_cases(
    predictor: Predictor,
    cases: list[Case],
    output_dir: Path,
    *,
    overwrite: bool = False,
    stats: bool = False,
    progress: bool = True,
    rank: int = 0,
) -> list[CaseResult]:
    """Run :func:`predict_case` over ``cases``, skipping those whose outputs exist (unless ``overwrite``)."""
    results = []
    for case in tqdm(cases, desc="predict", unit="case", disable=not progress):
        wanted = [output_dir / case.output_name] + ([output_dir / f"{case.case_id}.json"] if stats else [])
        if not overwrite and all(path.exists() for path in wanted):
            result = CaseResult(case.name, case.output_name, "skipped")
        else:
            result = predict_case(predictor, case, output_dir, stats=stats)
        result.rank = rank
        results.append(result)
    return results


def summary(results: list[CaseResult], elapsed: float, world_size: int = 1) -> str:
    """A per-case table (status, seconds, organs found), the counts, and every failure with its reason."""
    width = max([len("case"), *(len(result.name) for result in results)])
    rank_header = f"{'rank':>5}" if world_size > 1 else ""
    lines = [f"{'case':<{width}}  {'status':<8}{'time s':>8}{'organs':>8}{rank_header}"]
    for result in sorted(results, key=lambda r: r.name):
        rank = f"{result.rank:>5}" if world_size > 1 else ""
        time_s = f"{result.seconds:>8.2f}" if result.status != "skipped" else f"{'-':>8}"
        organs = f"{result.organs:>8}" if result.status == "written" else f"{'-':>8}"
        lines.append(f"{result.name:<{width}}  {result.status:<8}{time_s}{organs}{rank}")
    counts = {status: sum(r.status == status for r in results) for status in ("written", "skipped", "failed")}
    written = [r.seconds for r in results if r.status == "written"]
    mean = f" (mean {sum(written) / len(written):.2f} s per written case)" if written else ""
    lines.append(
        f"written {counts['written']}, skipped {counts['skipped']} (output exists), failed {counts['failed']} "
        f"in {elapsed:.1f} s{mean}"
    )
    lines += [f"  WARNING {r.name}: {warning}" for r in results for warning in r.warnings]
    lines += [f"  FAILED {r.name}: {r.reason}" for r in sorted(results, key=lambda r: r.name) if r.status == "failed"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="predict.sh",
        description="Segment the 13 FLARE22 organs in every CT of a folder (coarse-to-fine).",
        epilog="predict.sh also takes --nproc N (N processes under torchrun, each taking every N-th case) and "
        "torchrun's multi-node options. Without -i/-o: segment the embedded sample CT and score it.",
    )
    parser.add_argument("-i", "--input", type=Path, help="folder of .nii/.nii.gz files and DICOM series folders")
    parser.add_argument("-o", "--output", type=Path, help="folder for the masks (<id>.nii.gz)")
    parser.add_argument("--weights", type=Path, help="folder holding coarse.pt and fine.pt (default: model_weights/)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: %(default)s")
    parser.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto", help="default: %(default)s")
    parser.add_argument("--stats", action="store_true", help="also write <id>.json with per-organ statistics")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--status-file",
        type=Path,
        help="write the exit status here and exit 0 (predict.sh uses it under torchrun, which reports any "
        "non-zero exit as a crash with a traceback)",
    )
    args = parser.parse_args(argv)
    if (args.input is None) != (args.output is None):
        parser.error("-i INPUT_DIR and -o OUTPUT_DIR go together (give neither to run the embedded sample)")
    return args


def run_batch(args: argparse.Namespace, context: distributed.DistributedContext) -> int:
    """Every rank predicts its share; rank 0 prints the summary. Returns the exit status (the same on every rank)."""
    say = print if context.is_main else (lambda *a, **k: None)
    if not args.input.is_dir():
        say(f"predict: input folder {args.input} does not exist", file=sys.stderr)
        return 2
    # Every rank loads the model; all must succeed before any starts (a lone failure would hang the others).
    try:
        predictor, error = Predictor.from_weights(args.weights, context.device, args.precision), None
    except (OSError, ValueError, RuntimeError) as failure:
        predictor, error = None, f"predict: {failure}"
    errors = [e for e in distributed.gather_objects(error) if e]
    if errors:
        say(errors[0], file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    cases, problems, ignored = find_cases(args.input, args.output)
    say(
        f"predict: {len(cases) + len(problems)} case(s) in {args.input} -> {args.output} "
        f"({context.world_size} process(es) on {context.device.type})"
    )
    if ignored:
        say(f"  passed over (neither NIfTI nor folder): {', '.join(ignored)}")
    started = time.perf_counter()
    mine = cases[context.rank :: context.world_size]
    results = predict_cases(
        predictor, mine, args.output, overwrite=args.overwrite, stats=args.stats,
        progress=context.is_main and not args.no_progress, rank=context.rank,
    )  # fmt: skip
    gathered = [result for part in distributed.gather_objects([asdict(r) for r in results]) for result in part]
    everything = [CaseResult(**result) for result in gathered]
    everything += [CaseResult(name, "", "failed", reason=reason) for name, reason in problems.items()]
    say(summary(everything, time.perf_counter() - started, context.world_size))
    return 1 if any(result.status == "failed" for result in everything) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        context = distributed.setup(args.device, timeout_minutes=DISTRIBUTED_TIMEOUT_MINUTES)
    except RuntimeError as error:
        print(f"predict: {error}", file=sys.stderr)
        return 2
    try:
        if args.input is None:
            from segcore.sample import run_sample

            status = run_sample(args.weights, context.device, args.precision) if context.is_main else 0
        else:
            status = run_batch(args, context)
    finally:
        distributed.cleanup()
    if args.status_file is None:
        return status
    if context.local_rank == 0:  # one writer per machine: each node's predict.sh reads its own file
        args.status_file.write_text(f"{status}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
