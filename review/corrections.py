"""What the review station writes: a reviewer's corrected mask and the reviews of a batch.

Two names only, both inside the output folder, each written atomically (a temporary file beside
it, renamed over it):

- ``<case>_corrected.nii.gz``: the label map the reviewer painted, on the case's exact grid (the
  model's mask's size, spacing, origin and direction, as SimpleITK and nibabel read it). The model's
  ``<case>.nii.gz`` is never written.
- ``reviews.csv`` beside ``summary.csv``: one row per reviewed case, ``case,status,time,mask,stamp``:
  ``accepted`` (the model's mask is right; ``mask`` is the model's) or ``corrected`` (``mask`` is
  the corrected file), with the UTC time of the save and the mask file's stamp then (size and
  modification time): a mask written again afterwards (``predict.sh --overwrite``) makes the review
  stale, never a label nobody saw. A later review of a case replaces its row.

A correction arrives as the bytes of a NIfTI file (gzip-ed or not) in the voxel order of the
case's CT, as the viewer saves its drawing. It is refused, with the reason, when it is larger than
the case's grid can need, is not NIfTI, has another grid than the model's mask, or holds values
that are not organ labels (0-13).
"""

from __future__ import annotations

import csv
import io
import threading
import zlib
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from segcore.labels import ORGANS
from segcore.runtime.files import write_text_atomic
from segcore.volumes import write_volume
from segcore.volumes.itk import geometry_of

REVIEWS = "reviews.csv"
FIELDS = ("case", "status", "time", "mask", "stamp")
STATUSES = ("accepted", "corrected")
CORRECTED_SUFFIX = "_corrected.nii.gz"
BYTES_PER_VOXEL = 2
"""The largest label type a correction may come in: uint8 from the viewer, 16 bits from other tools."""
HEADER_ALLOWANCE = 1 << 20
"""Bytes a correction may hold beyond its voxels (its header and extensions)."""
AFFINE_TOLERANCE_MM = 1e-3
"""How far a correction's voxel-to-world matrix may lie from the mask's (float32 headers round)."""


class CorrectionError(ValueError):
    """A correction that cannot be kept; ``status`` is the HTTP status that says why (413, 422)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Review:
    """One row of ``reviews.csv``."""

    case: str
    status: str
    time: str
    mask: str
    stamp: str = ""

    def current(self, output_dir: Path) -> bool:
        """Whether the mask the review names is still the file that was reviewed."""
        return file_stamp(Path(output_dir) / self.mask) == self.stamp != ""


def file_stamp(path: Path) -> str:
    """A file's size and modification time (``"size:mtime_ns"``), or "" when it is not there."""
    try:
        status = path.stat()
    except OSError:
        return ""
    return f"{status.st_size}:{status.st_mtime_ns}"


def corrected_name(case_id: str) -> str:
    """The file name of a case's correction."""
    return f"{case_id}{CORRECTED_SUFFIX}"


def read_reviews(output_dir: Path) -> dict[str, Review]:
    """The reviews of ``output_dir`` by case id; rows without a known status or a case are left out
    (a hand-edited file never stops the station), an absent file is no review."""
    try:
        text = (Path(output_dir) / REVIEWS).read_text(encoding="utf-8-sig", errors="replace")
    except FileNotFoundError:
        return {}
    reviews = {}
    for row in csv.DictReader(io.StringIO(text, newline="")):
        review = Review(*(str(row.get(field) or "") for field in FIELDS))
        if review.case and review.status in STATUSES:
            reviews[review.case] = review
    return reviews


class ReviewBook:
    """``reviews.csv`` of one output folder, written by one station (a lock orders its saves)."""

    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)
        self.lock = threading.Lock()

    def read(self) -> dict[str, Review]:
        return read_reviews(self.output_dir)

    def record(self, case_id: str, status: str, mask: str) -> tuple[Review, Review | None]:
        """Keep ``case_id``'s review of the mask file ``mask`` (in the output folder, stamped now);
        returns it and the review it replaced (None if none)."""
        if status not in STATUSES:
            raise ValueError(f"review status must be one of {STATUSES} (got {status!r})")
        with self.lock:
            reviews = self.read()
            previous = reviews.get(case_id)
            review = Review(case_id, status, now(), mask, file_stamp(self.output_dir / mask))
            reviews[case_id] = review
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(asdict(r) for r in sorted(reviews.values(), key=lambda r: r.case))
            write_text_atomic(self.output_dir / REVIEWS, buffer.getvalue())
        return review, previous


def now() -> str:
    """The time of a review: UTC, ISO 8601 to the millisecond (two saves a second apart differ)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def save_correction(data: bytes, model_mask: Path, destination: Path) -> dict[str, int]:
    """Check ``data`` (a correction of the case whose model mask is ``model_mask``) and write it to
    ``destination`` on the mask's grid; returns its voxel count per organ label present.

    Raises:
        CorrectionError: too large (413), not NIfTI, another grid, values not organ labels (422).
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(model_mask))
    reader.ReadImageInformation()
    geometry = geometry_of(reader)
    reference = nib.load(model_mask)
    voxels = int(np.prod(geometry.size))
    raw = _decompressed(data, voxels * BYTES_PER_VOXEL + HEADER_ALLOWANCE)
    try:
        image = nib.Nifti1Image.from_bytes(raw)
    except Exception as error:  # nibabel raises several kinds on bytes that are not NIfTI-1
        raise CorrectionError(f"the correction is not a NIfTI-1 file ({type(error).__name__}: {error})") from None
    shape = tuple(int(n) for n in image.shape)
    if shape[3:] not in ((), (1,)) or shape[:3] != tuple(geometry.size):
        raise CorrectionError(
            f"the correction's grid is {'x'.join(map(str, shape))} voxels, the case's is "
            f"{'x'.join(map(str, geometry.size))}: it belongs to another scan"
        )
    if not np.allclose(image.affine, reference.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
        raise CorrectionError(
            "the correction's voxel-to-world matrix differs from the case's: it lies elsewhere in space "
            f"(largest difference {np.abs(image.affine - reference.affine).max():.4g} mm)"
        )
    if not np.issubdtype(image.get_data_dtype(), np.integer):
        raise CorrectionError(f"the correction's voxels are {image.get_data_dtype()}, not whole numbers (labels)")
    slope, inter = image.dataobj.slope, image.dataobj.inter
    if slope != 1 or inter != 0:
        raise CorrectionError(f"the correction's values are scaled (slope {slope}, intercept {inter}): not labels")
    try:
        labels = np.asarray(image.dataobj.get_unscaled()).reshape(shape[:3])
    except (OSError, ValueError, EOFError) as error:  # fewer bytes than the header's grid needs
        raise CorrectionError(f"the correction's voxels are cut short ({error})") from None
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > len(ORGANS):
        raise CorrectionError(f"the correction holds values {low}..{high}; organ labels are 0..{len(ORGANS)}")
    zyx = np.ascontiguousarray(labels.transpose(2, 1, 0), dtype=np.uint8)
    write_volume(destination, zyx, geometry)
    counts = np.bincount(zyx.ravel(), minlength=len(ORGANS) + 1)
    return {str(label): int(count) for label, count in enumerate(counts) if label and count}


def _decompressed(data: bytes, limit: int) -> bytes:
    """``data`` as sent, or gunzip-ed; 413 as soon as either is over ``limit`` bytes."""
    if len(data) > limit:
        raise CorrectionError(f"the correction is {len(data)} bytes; this case's grid needs at most {limit}", 413)
    if data[:2] != b"\x1f\x8b":
        return data
    stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        raw = stream.decompress(data, limit + 1)
    except zlib.error as error:
        raise CorrectionError(f"the correction is not a whole gzip stream ({error})") from None
    if len(raw) > limit:
        raise CorrectionError(f"the correction unpacks to over {limit} bytes, more than this case's grid needs", 413)
    if not stream.eof:
        raise CorrectionError("the correction is not a whole gzip stream (it ends early)")
    return raw
