"""``segcore-export-labels OUTPUT_DIR --to DATA_ROOT``: a reviewed batch as training data.

The cases of a ``predict.sh`` output folder go to a FLARE22-layout data root, as ``data_prepare``
reads it:

- reviewed cases (``reviews.csv``: ``accepted`` or ``corrected``) as labeled cases:
  ``train_images/<case>_0000.nii.gz`` (the input CT) and ``train_mask/<case>.nii.gz`` (the model's
  mask if accepted, the reviewer's correction if corrected);
- the other cases with a mask as unlabeled cases: ``trainu_images/<case>_0000.nii.gz``;
- failed cases (no mask) are left out and named;
- a review whose mask was written again after it (``reviews.csv``'s stamp: ``predict.sh
  --overwrite``) is stale: its case goes out unlabeled, named, never as a label nobody saw.

A NIfTI input is copied (gzip-ed if it was not), a DICOM series written as NIfTI with its geometry.
Every file is written atomically. The command keeps ``exported.json`` in the data root: each file it
wrote, where from, from which output folder, and its stamp (size, modification time). It replaces
or removes only such a file, exported from the same output folder and unchanged since: run again
after more reviews, a case moves from unlabeled to labeled; a file it did not write (the user's own
labeled case), one another batch exported, or one edited since, is never replaced: that case is
refused and named, and what the refused case had written by then is taken back. One case that
cannot be exported does not stop the others; the exit status is 1 when any was refused.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from review.corrections import file_stamp, read_reviews
from review.table import ReviewError, read_table, recorded_input_dir
from segcore.outputs.records import TABLE, RecordCache
from segcore.runtime.files import replace_atomically, write_text_atomic
from segcore.volumes import VolumeError, is_nifti, read_volume, write_volume
from segcore.volumes.geometry import Geometry
from segcore.volumes.itk import geometry_of

MANIFEST = "exported.json"
SPLITS = {"labeled": ("train_images", "train_mask"), "unlabeled": ("trainu_images", None)}


@dataclass
class ExportReport:
    labeled: dict[str, str] = field(default_factory=dict)
    """case id -> accepted | corrected"""
    unlabeled: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    """Reviewed cases whose mask was written again after the review (exported unlabeled)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """case id -> why it is not exported (no mask, a refusal)"""

    def summary(self, data_root: Path) -> str:
        kinds = list(self.labeled.values())
        lines = [
            f"exported {len(self.labeled)} labeled case(s) ({kinds.count('accepted')} accepted, "
            f"{kinds.count('corrected')} corrected) and {len(self.unlabeled)} unlabeled to {data_root}"
        ]
        if self.stale:
            lines.append(f"  {len(self.stale)} review(s) stale (the mask was written again after it), exported "
                         f"unlabeled: {', '.join(self.stale)}")  # fmt: skip
        lines += [f"  not exported: {case}: {reason}" for case, reason in sorted(self.skipped.items())]
        return "\n".join(lines)


def export_labels(output_dir: Path, data_root: Path, input_dir: Path | None = None) -> ExportReport:
    """Write the reviewed batch in ``output_dir`` to ``data_root`` (see the module's description)."""
    output_dir, data_root = Path(output_dir).resolve(), Path(data_root).resolve()
    if not (output_dir / TABLE).is_file():
        raise ReviewError(f"{output_dir}: no {TABLE} here: is it a predict.sh output folder?")
    if data_root == output_dir:
        raise ReviewError(f"{data_root}: the data root must be another folder than the output folder")
    records = RecordCache(output_dir, lambda record: record).read()
    if input_dir is None:
        input_dir = recorded_input_dir(output_dir, {record.input_dir for record in records.values()})
    if input_dir is None:
        raise ReviewError(f"{output_dir}: the records name no input folder: say which with --input-dir")
    input_dir = Path(input_dir).resolve()
    reviews = read_reviews(output_dir)
    data_root.mkdir(parents=True, exist_ok=True)
    manifest_path = data_root / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    report = ExportReport()
    for row in read_table(output_dir / TABLE).rows:
        case = row["case"]
        if row["status"] != "written":
            report.skipped[case] = f"no mask ({row['status']})"
            continue
        review = reviews.get(case)
        record = records.get(case)
        if review is not None and not review.current(output_dir):
            review = None
            report.stale.append(case)
        try:
            source = inside(input_dir / row["input"], input_dir, f"the input {row['input']!r}")
            if review is None:
                _export_case(data_root, manifest, case, "unlabeled", source, None, output_dir)
                report.unlabeled.append(case)
            else:
                model_mask = record.mask if record is not None and record.mask else f"{case}.nii.gz"
                name = review.mask if review.status == "corrected" else model_mask
                mask = inside(output_dir / name, output_dir, f"the {review.status} mask {name!r}")
                _export_case(data_root, manifest, case, "labeled", source, mask, output_dir)
                report.labeled[case] = review.status
        except (ReviewError, VolumeError, OSError, RuntimeError) as error:
            report.skipped[case] = str(error)
        finally:
            write_text_atomic(manifest_path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return report


def inside(path: Path, root: Path, what: str) -> Path:
    """``path`` with every link followed, if it exists and lies inside ``root``."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ReviewError(f"{what}: {path} does not exist") from None
    if not resolved.is_relative_to(root) or resolved == root:
        raise ReviewError(f"{what}: {path} lies outside {root}")
    return resolved


def _export_case(
    data_root: Path, manifest: dict, case: str, split: str, image: Path, mask: Path | None, batch: Path
) -> None:
    image_dir, mask_dir = SPLITS[split]
    wanted = {f"{image_dir}/{case}_0000.nii.gz": str(image)}
    if mask_dir is not None:
        wanted[f"{mask_dir}/{case}.nii.gz"] = str(mask)
    others = [f"{folder}/{case}{suffix}" for folder, suffix in
              (("train_images", "_0000.nii.gz"), ("train_mask", ".nii.gz"), ("trainu_images", "_0000.nii.gz"))
              if f"{folder}/{case}{suffix}" not in wanted]  # fmt: skip
    for relative in [*wanted, *others]:
        path, entry = data_root / relative, manifest.get(relative)
        if not path.exists():
            continue
        if entry is None:
            raise ReviewError(f"{path} exists and was not written by this command: not replaced")
        if entry.get("batch") != str(batch):
            raise ReviewError(f"{path} was exported from another output folder ({entry.get('batch')}): not replaced")
        if file_stamp(path) != entry.get("stamp"):
            raise ReviewError(f"{path} changed since it was exported: not replaced")
    volume = None if image.is_file() and is_nifti(image) else read_volume(image)  # a DICOM series
    if mask is not None:
        grid, mask_grid = volume[1] if volume else header_geometry(image), header_geometry(mask)
        if not grid.same_grid(mask_grid):
            raise ReviewError(f"{mask.name}: its grid is not its CT's ({mask_grid} vs {grid})")
    written = []
    try:
        for relative, source in wanted.items():
            destination = data_root / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            if relative.startswith("train_mask/"):
                _copy(Path(source), destination)
            elif volume is not None:
                write_volume(destination, *volume)
            else:
                _write_nifti(Path(source), destination)
            written.append(relative)
            manifest[relative] = {"source": source, "batch": str(batch), "stamp": file_stamp(destination)}
    except BaseException:
        for relative in written:  # no image without its mask
            (data_root / relative).unlink(missing_ok=True)
            manifest.pop(relative, None)
        raise
    for relative in others:  # the case's files from an earlier export in the other split
        if relative in manifest:
            (data_root / relative).unlink(missing_ok=True)
            del manifest[relative]


def _copy(source: Path, destination: Path) -> None:
    replace_atomically(destination, lambda temporary: shutil.copyfile(source, temporary), ".nii.gz")


def _write_nifti(source: Path, destination: Path) -> None:
    """A NIfTI input copied, gzip-ed if it was not."""
    if source.name.lower().endswith(".gz"):
        _copy(source, destination)
        return

    def gzipped(temporary: Path) -> None:
        with source.open("rb") as stream, gzip.open(temporary, "wb", compresslevel=1) as out:
            shutil.copyfileobj(stream, out, 1 << 20)

    replace_atomically(destination, gzipped, ".nii.gz")


def header_geometry(path: Path) -> Geometry:
    """The grid a NIfTI file's header describes, as SimpleITK reads it (no voxels read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ReviewError(f"{path}: cannot be read as an image ({str(error).strip().splitlines()[-1]})") from None
    return geometry_of(reader)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segcore-export-labels", description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path, help="a reviewed predict.sh output folder (summary.csv, reviews.csv)")
    parser.add_argument("--to", dest="data_root", type=Path, required=True, help="the FLARE22-layout data root")
    parser.add_argument(
        "-i", "--input-dir", "--input", type=Path, help="the inputs' folder (default: the one the records name)"
    )
    args = parser.parse_args(argv)
    try:
        report = export_labels(args.output_dir, args.data_root, args.input_dir)
    except ReviewError as error:
        print(f"segcore-export-labels: {error}", file=sys.stderr)
        return 2
    print(report.summary(args.data_root.resolve()))
    return 1 if any(not reason.startswith("no mask") for reason in report.skipped.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
