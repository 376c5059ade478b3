"""Batch prediction over a folder of CTs, in one process or sharded over torchrun processes.

    sh predict.sh -i INPUT -o OUTPUT_DIR [--weights DIR] [--device auto|cpu|cuda|cuda:N]
                  [--precision auto|fp32|fp16|bf16] [--nproc N] [--stats] [--overwrite] [--strict]
                  [--output-type nifti|dicom-seg|rtstruct|both[,...]] [--organs NAME,...] [--preview]
                  [--body-region]
    sh predict.sh                # the embedded sample: see predict.sample

INPUT is one NIfTI file, one DICOM series folder, or a folder of them (:mod:`predict.cases`):
then every ``.nii``/``.nii.gz`` file and every sub-folder (one DICOM series each) is a case,
sorted by name; what is plainly not a CT (a label map, a 4-D image, an MR series:
:mod:`predict.screen`), hidden entries, other files and OUTPUT_DIR itself are passed over, one
line each with the reason. ``--organs liver,spleen`` keeps those organs alone in every output
(names of :data:`segcore.labels.ORGANS`; an unknown one is a usage error before any work).
Output names: ``<id>_0000.nii.gz`` -> ``<id>.nii.gz`` (FLARE), anything else keeps its stem,
plus ``.nii.gz``. Each mask carries exactly its input's size, spacing, origin and direction.
Existing outputs are kept (the case is skipped) unless ``--overwrite``. A case's outputs are
made in a hidden staging folder and moved to their names together once every one was made
(:mod:`segcore.outputs.case`): a case that fails leaves no file, an interrupted run leaves whole
files only, and a re-run finishes the rest. ``--stats`` also writes
``<id>.json`` (per-organ volume in mL, mean HU, bounding box; the crop box; warnings; timings);
``--output-type`` (a comma-separated list; ``both`` is ``nifti,dicom-seg``) ``dicom-seg`` writes
``<id>_seg.dcm`` and ``rtstruct`` ``<id>_rtstruct.dcm`` for DICOM inputs
(:mod:`segcore.outputs.dicom_seg`, :mod:`segcore.outputs.rtstruct`; one that cannot be made is a
warning beside the mask when ``nifti`` is asked for too, and otherwise a failed case, refused
before inference where the headers tell);
``--preview`` ``<id>_preview.png`` (:mod:`segcore.outputs.preview`). Every case leaves a record, and
``summary.csv`` is rebuilt from all records in OUTPUT_DIR after every case (:mod:`segcore.outputs.records`),
so a killed run's table lists every case whose outputs it published but the one in flight. A scan
whose values are not Hounsfield units (:func:`segcore.volumes.hu_scale_warning`) is segmented with
a warning (the predictor's, which the service and the Python API give too) in its record and the table.

OUTPUT_DIR is checked before the weights load or any case is read: it is created if missing,
must be a folder, and must take a new file (a probe file is written and removed; permission bits
say nothing for root). A bad one is a one-line usage error.

Runs started at the same time on one OUTPUT_DIR split the cases: a run claims a case with an
exclusive ``flock`` on ``OUTPUT_DIR/.<id>.lock`` (see :func:`claim_case`). A case another run
holds is put off to the end of the list and then waited for; once claimed, its outputs are
looked for again, and a case the other run wrote counts as skipped. The claim is dropped and its
file removed once the case is written or has failed. The kernel drops the locks of a process
that dies, so a killed run's claims pass to the next run with no stale-lock handling; only its
hidden lock files stay behind, and the next run that claims such a case removes its file. With
``--overwrite`` a run redoes every case, so two concurrent runs may each write a case (in turn,
never at once).

With ``--nproc N`` (``python -m torch.distributed.run --standalone --nproc-per-node N -m
predict.batch ...``), rank ``r`` of ``W`` takes ``sorted_cases[r::W]``, so every case is
written exactly once; rank 0 gathers the results and prints the summary. Each rank uses its
own GPU (NCCL) or, on CPUs (Gloo), ``OMP_NUM_THREADS`` threads (predict.sh gives each process its
share of the cores unless ``OMP_NUM_THREADS`` is set).

A case that cannot be read or segmented is reported with its file and the reason and the batch
goes on (a concurrent run waiting for that case then tries it again); a name that is not UTF-8
is such a case, refused before SimpleITK, which would abort the process, sees it. A full disk is
not a case's fault: the run stops at the case that met it (:class:`DiskFull`), keeps what it
wrote and says so in one line; the next run finishes. Exit status: 0 when every case is written
or skipped, 1 when any case failed, 2 for a usage error (bad folders, missing or bad weights, an
unknown organ, a device this machine lacks), 3 when a full disk stopped the run.

The module is over 400 lines on purpose: a batch's life (claims, staging, records, ranks, the
summary) reads top to bottom in one place; the folder rules are in :mod:`predict.cases`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from predict.cases import Case, check_output_folder, find_cases, input_problem, lock_path
from predict.disk import DISK_FULL_STATUS, DiskFull, disk_is_full, stop_if_disk_full
from segcore.inference.predictor import Predictor
from segcore.inference.stage import PRECISIONS
from segcore.labels import ORGAN_IDS
from segcore.outputs.case import DICOM_OUTPUTS, build_case, dicom_refusal, organ_subset, publish
from segcore.outputs.records import ResultRow, organ_measures, rebuild_table, record_path, write_record
from segcore.outputs.source_series import DicomOutputUnavailable
from segcore.runtime import distributed
from segcore.runtime.allocator import keep_freed_memory
from segcore.runtime.claims import claim_case
from segcore.volumes import VolumeError, check_path_names, printable

DISTRIBUTED_TIMEOUT_MINUTES = 24 * 60
"""Ranks wait for each other only at the end; a long batch must not time the wait out."""


@dataclass(frozen=True)
class Outputs:
    """What a run writes per case (besides its record, :mod:`segcore.outputs.records`)."""

    nifti: bool = True
    dicom_seg: bool = False
    preview: bool = False
    stats: bool = False
    rtstruct: bool = False
    organs: tuple[int, ...] | None = None
    """FLARE22 ids every output keeps (``--organs``); None: all."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Outputs:
        kinds = args.output_type
        return cls("nifti" in kinds, "dicom-seg" in kinds, args.preview, args.stats, "rtstruct" in kinds, args.organs)

    def kinds(self) -> set[str]:
        """The :data:`segcore.outputs.case.KINDS` this run makes per case."""
        wanted = {"mask": self.nifti, "seg": self.dicom_seg, "rtstruct": self.rtstruct, "preview": self.preview,
                  "record": self.stats}  # fmt: skip
        return {kind for kind, asked in wanted.items() if asked}

    def destinations(self, case: Case, output_dir: Path) -> dict[str, Path]:
        """Where each kind of output of ``case`` goes."""
        return {kind: output_dir / name for kind, name in self.names(case).items() if kind in self.kinds()}

    @staticmethod
    def names(case: Case) -> dict[str, str]:
        """The file name of each kind of output of ``case``."""
        return {"mask": case.output_name, "seg": f"{case.case_id}_seg.dcm", "rtstruct": f"{case.case_id}_rtstruct.dcm",
                "preview": f"{case.case_id}_preview.png", "record": f"{case.case_id}.json"}  # fmt: skip

    def files(self, case: Case) -> list[str]:
        """The names of the case's outputs (DICOM outputs only for a DICOM input:
        :mod:`segcore.outputs.source_series`)."""
        dicom_made = case.path.is_dir() or not self.nifti
        names = self.names(case)
        return [names[kind] for kind in sorted(self.kinds()) if kind not in DICOM_OUTPUTS or dicom_made]


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
    verdict: str = ""
    quality_reasons: list[str] = field(default_factory=list)


class DicomRefused(Exception):
    """A DICOM output asked for without the mask cannot be made for this input (refused before inference)."""


MASK_OUTPUTS = {"mask", "seg", "rtstruct"}
"""The outputs that carry the mask, withheld with ``--strict`` on a ``fail`` verdict (the record says
why and the preview shows it)."""

STAGING = ".staging-"
"""A case's outputs are made in ``OUTPUT_DIR/.<id>.staging-XXXX/`` and moved out together."""


def predict_case(
    predictor: Predictor, case: Case, output_dir: Path, *, outputs: Outputs = Outputs(), strict: bool = False
) -> CaseResult:
    """Segment one case and write what ``outputs`` asks for, all or nothing; failures become a
    ``failed`` result with no file and no organ figures.

    Every output is made in a hidden staging folder (:mod:`segcore.outputs.case`) and moved to its
    name once all were made. A DICOM output (SEG, RTSTRUCT) asked for without the mask is refused
    before inference when the input's headers show it cannot be made; beside the mask, it is a warning. With
    ``strict``, a case whose quality verdict is ``fail`` gets none of :data:`MASK_OUTPUTS` and is ``failed``.
    """
    started = time.perf_counter()
    for stale in output_dir.glob(f".{case.case_id}{STAGING}*"):  # left by a killed run (we hold the claim)
        shutil.rmtree(stale, ignore_errors=True)
    organs: dict = {}
    staging = None
    full = None

    def failed(reason: str) -> CaseResult:
        return CaseResult(case.name, case.output_name, "failed", time.perf_counter() - started, reason)

    try:
        check_path_names(case.path)  # before SimpleITK or GDCM, which abort the process on such a name
        staging = Path(tempfile.mkdtemp(prefix=f".{case.case_id}{STAGING}", dir=output_dir))
        if not outputs.nifti:
            refusals = [dicom_refusal(case.path, kind) for kind in DICOM_OUTPUTS if kind in outputs.kinds()]
            if refusal := next((refusal for refusal in refusals if refusal), None):
                raise DicomRefused(refusal)
        prediction, image, geometry = predictor.predict_file(case.path)
        quality = prediction.quality
        refused = strict and quality.verdict == "fail"
        kinds = outputs.kinds() - (MASK_OUTPUTS if refused else set())
        made = build_case(
            staging, kinds, case=case.case_id, input_name=case.name, source=case.path, prediction=prediction,
            image=image, geometry=geometry, notice=predictor.notice, withheld=refused, organs=outputs.organs,
            checkpoints_sha256=[source["sha256"] for source in predictor.sources.values()],
        )  # fmt: skip
        publish(made.files, outputs.destinations(case, output_dir))
        organs = {name: organ.model_dump() for name, organ in made.record.organs.items()}
    except VolumeError as error:
        result = failed(str(error))
    except DicomRefused as error:
        result = failed(f"{printable(case.path)}: {error}")
    except DicomOutputUnavailable as error:
        result = failed(f"{printable(case.path)}: no {error.output}: {error}")
    except Exception as error:  # one bad case must not stop the batch; the traceback goes to the log
        if disk_is_full(error, output_dir):
            full = DiskFull(output_dir, error)
            result = failed(f"{printable(case.path)}: not written: {full}")
        else:
            traceback.print_exc(file=sys.stderr)
            result = failed(f"{printable(case.path)}: internal error while segmenting ({error})")
    else:
        result = CaseResult(
            case.name, case.output_name, "written", time.perf_counter() - started, organs=quality.organ_count,
            warnings=made.record.warnings, verdict=quality.verdict, quality_reasons=quality.reasons,
        )  # fmt: skip
        if refused:
            result.status, result.reason = (
                "failed",
                f"{printable(case.path)}: quality verdict fail (--strict: no mask written)",
            )
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    try:
        write_record(output_dir, record_of(case, result, organs))
    except OSError as error:
        stop_if_disk_full(error, output_dir, result)
        raise
    if full is not None:
        full.result = result
        raise full
    return result


def record_of(case: Case, result: CaseResult, statistics: dict) -> ResultRow:
    """The case's row of the results table (:mod:`segcore.outputs.records`)."""
    return ResultRow(
        case=case.case_id, input=case.name, input_dir=str(case.path.parent.resolve()),
        mask=case.output_name, status=result.status, seconds=round(result.seconds, 3),
        verdict=result.verdict, quality_reasons=result.quality_reasons, warnings=result.warnings,
        reason=result.reason, organs=organ_measures(statistics),
    )  # fmt: skip


def outputs_exist(case: Case, output_dir: Path, outputs: Outputs) -> bool:
    """Whether every output the run asks for is already in ``output_dir``."""
    return all((output_dir / name).exists() for name in outputs.files(case))


def settle_case(
    predictor: Predictor,
    case: Case,
    output_dir: Path,
    *,
    overwrite: bool,
    outputs: Outputs,
    wait: bool,
    strict: bool = False,
) -> CaseResult | None:
    """Skip the case, or claim it and predict it; ``None`` when another run holds it and ``wait`` is false."""
    if not overwrite and outputs_exist(case, output_dir, outputs):
        return skipped(case, output_dir)
    try:
        claim = claim_case(lock_path(output_dir, case), wait=wait)
    except OSError as error:
        stop_if_disk_full(error, output_dir)
        reason = f"{printable(lock_path(output_dir, case))}: cannot claim the case: {error.strerror}"
        return CaseResult(case.name, case.output_name, "failed", reason=reason)
    if claim is None:
        return None
    try:
        # Another run may have held the claim and written the case meanwhile. A holder removes its
        # lock file only after its outputs are in place, so whoever locks after it, the old file or
        # a new one, finds them here; claim_case's same-file check keeps two runs from holding one
        # case at once when the holder failed it.
        if not overwrite and outputs_exist(case, output_dir, outputs):
            return skipped(case, output_dir)
        return predict_case(predictor, case, output_dir, outputs=outputs, strict=strict)
    finally:
        claim.release()


def skipped(case: Case, output_dir: Path) -> CaseResult:
    """A case whose outputs exist; its record stays as the run that wrote them left it."""
    result = CaseResult(case.name, case.output_name, "skipped")
    if ResultRow.read(record_path(output_dir, case.case_id)) is None:  # no record, or one that cannot be read
        try:
            write_record(output_dir, record_of(case, result, {}))
        except OSError as error:
            stop_if_disk_full(error, output_dir, result)
            raise
    return result


def predict_cases(
    predictor: Predictor,
    cases: list[Case],
    output_dir: Path,
    *,
    overwrite: bool = False,
    outputs: Outputs = Outputs(),
    strict: bool = False,
    progress: bool = True,
    rank: int = 0,
) -> list[CaseResult]:
    """Settle every case (:func:`settle_case`), in order; those another run holds are put off to the
    end and then waited for, so concurrent runs over one ``output_dir`` split the cases.
    ``summary.csv`` is rebuilt after every case, so a killed run's table lists every case it finished.

    Returns:
        The results in the order the cases were settled.

    Raises:
        DiskFull: the disk of ``output_dir`` filled up: the cases after it are not tried (each would
            fail the same way); the exception holds the results so far, and the table lists them.
    """
    settle = partial(settle_case, predictor, output_dir=output_dir, overwrite=overwrite, outputs=outputs, strict=strict)
    results: list[CaseResult] = []
    deferred: list[Case] = []

    def done(result: CaseResult) -> None:
        results.append(result)
        bar.update()
        try:
            rebuild_table(output_dir)
        except OSError as error:
            stop_if_disk_full(error, output_dir)
            raise

    with tqdm(total=len(cases), desc="predict", unit="case", disable=not progress) as bar:
        try:
            for case in cases:
                result = settle(case, wait=False)
                if result is None:
                    deferred.append(case)
                else:
                    done(result)
            for case in deferred:
                done(settle(case, wait=True))
        except DiskFull as full:
            if full.result is not None:
                results.append(full.result)
            for result in results:
                result.rank = rank
            full.results, full.not_attempted = results, len(cases) - len(results)
            with contextlib.suppress(OSError):  # the stopped case's row, if the table still fits
                rebuild_table(output_dir)
            raise
    for result in results:
        result.rank = rank
    return results


def summary(results: list[CaseResult], elapsed: float, world_size: int = 1) -> str:
    """A per-case table (status, seconds, organs found, quality verdict), the counts, every quality
    concern and every failure with its reason."""
    width = max([len("case"), *(len(result.name) for result in results)])
    rank_header = f"{'rank':>5}" if world_size > 1 else ""
    lines = [f"{'case':<{width}}  {'status':<8}{'time s':>8}{'organs':>8}  {'verdict':<7}{rank_header}"]
    for result in sorted(results, key=lambda r: r.name):
        rank = f"{result.rank:>5}" if world_size > 1 else ""
        time_s = f"{result.seconds:>8.2f}" if result.status != "skipped" else f"{'-':>8}"
        organs = f"{result.organs:>8}" if result.status == "written" else f"{'-':>8}"
        lines.append(f"{result.name:<{width}}  {result.status:<8}{time_s}{organs}  {result.verdict or '-':<7}{rank}")
    counts = {status: sum(r.status == status for r in results) for status in ("written", "skipped", "failed")}
    written = [r.seconds for r in results if r.status == "written"]
    mean = f" (mean {sum(written) / len(written):.2f} s per written case)" if written else ""
    lines.append(
        f"written {counts['written']}, skipped {counts['skipped']} (output exists), failed {counts['failed']} "
        f"in {elapsed:.1f} s{mean}"
    )
    lines += [f"  WARNING {r.name}: {warning}" for r in results for warning in r.warnings]
    lines += [
        f"  {r.verdict.upper()} {r.name}: {'; '.join(r.quality_reasons)}"
        for r in sorted(results, key=lambda r: r.name)
        if r.verdict in ("review", "fail")
    ]
    lines += [f"  FAILED {r.name}: {r.reason}" for r in sorted(results, key=lambda r: r.name) if r.status == "failed"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="predict.sh",
        description="Segment the 13 FLARE22 organs in every CT of a folder (coarse-to-fine).",
        epilog="predict.sh also takes --nproc N (N processes under torchrun, each taking every N-th case) and "
        "torchrun's multi-node options. Without -i/-o: segment the embedded sample CT and score it.",
    )
    parser.add_argument(
        "-i", "--input", type=Path,
        help="a .nii/.nii.gz file, a DICOM series folder, or a folder of them (label maps, 4-D images and "
        "non-CT series in it are passed over)",
    )  # fmt: skip
    parser.add_argument("-o", "--output", type=Path, help="folder for the masks (<id>.nii.gz)")
    parser.add_argument(
        "--weights", type=Path, help="folder with coarse.pt and fine.pt (default: $SEGCORE_WEIGHTS, else shipped model)"
    )
    parser.add_argument(
        "--device", type=device_choice, default="auto", help="auto, cpu, cuda or cuda:N (one named GPU); "
        "default: %(default)s",
    )  # fmt: skip
    parser.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto", help="default: %(default)s")
    parser.add_argument("--stats", action="store_true", help="also write <id>.json with per-organ statistics")
    parser.add_argument(
        "--output-type", type=output_types, default=("nifti",), metavar="TYPE[,TYPE...]",
        help="any of nifti (<id>.nii.gz), dicom-seg (<id>_seg.dcm), rtstruct (<id>_rtstruct.dcm); both = "
        "nifti,dicom-seg. DICOM-SEG and RTSTRUCT reference the source series: DICOM inputs only",
    )  # fmt: skip
    parser.add_argument(
        "--organs", type=organ_choice, metavar="NAME[,NAME...]",
        help=f"write these organs only (default: all): {', '.join(ORGAN_IDS)}",
    )  # fmt: skip
    parser.add_argument("--preview", action="store_true", help="also write <id>_preview.png (three slices, legend)")
    parser.add_argument(
        "--body-region", action="store_true",
        help="set arms, table and cushions outside the trunk to air first (models trained on body-region stores)",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="write no mask, DICOM-SEG or RTSTRUCT for a case whose quality verdict is fail; it counts as failed",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--status-file",
        type=Path,
        help="write the exit status here and exit 0 (predict.sh uses it under torchrun, which reports any "
        "non-zero exit as a crash with a traceback)",
    )
    args = parser.parse_args(argv)
    if (args.input is None) != (args.output is None):
        parser.error("-i INPUT and -o OUTPUT_DIR go together (give neither to run the embedded sample)")
    return args


OUTPUT_TYPES = ("nifti", "dicom-seg", "rtstruct")


def output_types(text: str) -> tuple[str, ...]:
    """``--output-type``: a comma-separated list of :data:`OUTPUT_TYPES` (``both``: nifti and dicom-seg)."""
    asked = [name.strip() for name in text.split(",") if name.strip()]
    expanded = [kind for name in asked for kind in (("nifti", "dicom-seg") if name == "both" else (name,))]
    unknown = [name for name in expanded if name not in OUTPUT_TYPES]
    if unknown or not expanded:
        expected = f"a comma-separated list of {', '.join(OUTPUT_TYPES)} or both"
        raise argparse.ArgumentTypeError(f"'{text}': expected {expected}")
    return tuple(dict.fromkeys(expanded))


def organ_choice(text: str) -> tuple[int, ...]:
    """``--organs``: FLARE22 ids from organ names (:func:`segcore.outputs.case.organ_subset`)."""
    try:
        return organ_subset(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def device_choice(text: str) -> str:
    """``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; whether this machine has it is checked at start-up."""
    kind, colon, index = text.partition(":")
    if text in ("auto", "cpu", "cuda") or (kind == "cuda" and colon and index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"'{text}': expected auto, cpu, cuda or cuda:N (N a GPU index)")


def named_gpu(device: str) -> torch.device:
    """The GPU ``cuda:N`` names, once this machine is known to have it.

    Raises:
        RuntimeError: no CUDA here, no GPU ``N``, or processes that each take their own GPU (``--nproc``).
    """
    index = int(device.partition(":")[2])
    if not torch.cuda.is_available():
        raise RuntimeError(f"device '{device}' asked for, but CUDA is not available on this machine")
    count = torch.cuda.device_count()
    if index >= count:
        has = f"{count} CUDA device(s): cuda:0..cuda:{count - 1}"
        raise RuntimeError(f"device '{device}' asked for, but this machine has {has}")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise RuntimeError(
            f"device '{device}' names one GPU, but each of the --nproc processes takes its own: use --device cuda"
        )
    return torch.device("cuda", index)


def setup_context(device: str) -> distributed.DistributedContext:
    """This process's place and device: ``auto``/``cpu``/``cuda`` as :func:`segcore.runtime.distributed.setup`
    resolves them; ``cuda:N`` one named GPU for a one-process run."""
    if not device.startswith("cuda:"):
        return distributed.setup(device, timeout_minutes=DISTRIBUTED_TIMEOUT_MINUTES)
    gpu = named_gpu(device)
    distributed.configure_device(gpu)
    return distributed.DistributedContext(rank=0, local_rank=0, world_size=1, device=gpu)


def first_error(error: str | None) -> str | None:
    """The first error of any rank, on every rank, so that all ranks stop or go on together."""
    return next((e for e in distributed.gather_objects(error) if e), None)


def run_batch(args: argparse.Namespace, context: distributed.DistributedContext) -> int:
    """Every rank predicts its share; rank 0 prints the summary. Returns the exit status (the same on every rank)."""
    say = print if context.is_main else (lambda *a, **k: None)
    if (problem := input_problem(args.input)) is not None:
        say(f"predict: input {printable(args.input)} {problem}", file=sys.stderr)
        return 2
    # Every rank checks the folder and loads the model; all must succeed before any goes on (a
    # rank that stopped alone would leave the others waiting for it at the final gather).
    problem = check_output_folder(args.output)
    error = f"predict: output folder {printable(args.output)}: {problem}" if problem else None
    if (error := first_error(error)) is not None:
        say(error, file=sys.stderr)
        return 2
    try:
        predictor = Predictor.from_weights(args.weights, context.device, args.precision, body_region=args.body_region)
        error = None
    except (OSError, ValueError, RuntimeError) as failure:
        predictor, error = None, f"predict: {failure}"
    if (error := first_error(error)) is not None:
        say(error, file=sys.stderr)
        return 2
    cases, problems, passed_over = find_cases(args.input, args.output)
    say(
        f"predict: {len(cases) + len(problems)} case(s) in {printable(args.input)} -> {printable(args.output)} "
        f"({context.world_size} process(es) on {context.device.type})"
    )
    for name, reason in passed_over.items():
        say(f"  passed over {name}: {reason}")
    if predictor.notice:
        say(f"predict: NOTE on these weights: {predictor.notice}")
    started = time.perf_counter()
    mine = cases[context.rank :: context.world_size]
    try:
        results = predict_cases(
            predictor, mine, args.output, overwrite=args.overwrite, outputs=Outputs.from_args(args),
            strict=args.strict, progress=context.is_main and not args.no_progress, rank=context.rank,
        )  # fmt: skip
        stopped = None
    except DiskFull as full:
        results, stopped = full.results, (str(full), full.not_attempted)
    gathered = [result for part in distributed.gather_objects([asdict(r) for r in results]) for result in part]
    everything = [CaseResult(**result) for result in gathered]
    everything += [CaseResult(name, "", "failed", reason=reason) for name, reason in problems.items()]
    say(summary(everything, time.perf_counter() - started, context.world_size))
    stops = [stop for stop in distributed.gather_objects(stopped) if stop]
    if stops:
        left = sum(not_attempted for _, not_attempted in stops)
        say(
            f"predict: stopped: {stops[0][0]}; {left} case(s) not attempted; what was written is kept: free space "
            "and run again to finish",
            file=sys.stderr,
        )
        return DISK_FULL_STATUS
    return 1 if any(result.status == "failed" for result in everything) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # a batch reuses the same sizes case after case: see segcore.runtime.allocator
    try:
        context = setup_context(args.device)
    except RuntimeError as error:
        print(f"predict: {error}", file=sys.stderr)
        return 2
    try:
        if args.input is None:
            from predict.sample import run_sample

            status = run_sample(args.weights, context.device, args.precision) if context.is_main else 0
        else:
            status = run_batch(args, context)
    finally:
        distributed.cleanup()
        # Interpreter exit collects every object left (torch alone leaves ~10^5): frozen ones are
        # skipped, which saves ~0.3 s of a one-case run's ~2.4 s.
        gc.freeze()
    if args.status_file is None:
        return status
    if context.local_rank == 0:  # one writer per machine: each node's predict.sh reads its own file
        args.status_file.write_text(f"{status}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
