"""What an input volume must be: the error every reader raises, the size limits, and the checks
shared by the NIfTI and DICOM readers (shape, size, CT values, label values, grids).

Every failure is a :class:`VolumeError` whose message names the file and the reason in one line,
and whose ``kind`` says what went wrong (:data:`ErrorKind`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import SimpleITK as sitk

from segcore.volumes.geometry import Geometry
from segcore.volumes.names import is_utf8, printable

DEFAULT_MAX_VOXELS = 1024 * 1024 * 1024
"""Largest volume accepted by default (1 Gi voxels: 2 GiB as int16)."""


DEFAULT_MAX_BYTES = 2 * 1024 * 1024 * 1024
"""Largest decoded pixel data accepted by default (voxels × bytes per voxel)."""


SPACING_RANGE_MM = (0.01, 50.0)
"""Voxel sizes outside this range are header errors, not scans (ITK would silently use 1 mm for 0)."""


CT_AIR_OR_FAT_HU = -200.0
"""Any CT of a body holds air or fat below this HU; a volume with nothing below it is not a CT in HU."""


HU_SCALE = (-1024.0, 3071.0)
"""The values of a CT scanner's 12-bit HU scale: air is -1000 HU by definition and water 0; fat, soft
tissue, contrast and cortical bone (up to about +1900 HU) all lie inside it."""


HU_SCALE_MARGIN = 1000.0
"""Room on either side of :data:`HU_SCALE` for noise, beam hardening, interpolation and metal streaks."""


HU_OUTSIDE_SHARE = 0.01
"""Largest share of a scan's voxels (its padding value set aside) that may lie outside
:data:`HU_SCALE` widened by :data:`HU_SCALE_MARGIN` before its values are called not HU: metal
implants in an extended-scale scan stay well under it, while a rescaled scan (HU × 10, × 1000)
puts its air, at least, far outside."""


HU_SAMPLE_STRIDE = 7
"""The HU-scale look takes every this-many-th voxel (a share needs no more; 7 keeps clear of the
powers of two of the slice sizes)."""


ErrorKind = Literal["unreadable", "not_3d", "too_large", "geometry", "not_ct", "invalid"]
"""What is wrong with an input: ``unreadable`` (missing, empty, truncated, corrupt: the bytes),
``not_3d`` (2-D, 4-D, vector voxels), ``too_large`` (voxels or bytes over the limit),
``geometry`` (impossible spacing, ambiguous orientation), ``not_ct`` (values), ``invalid``
(anything else: labels, grids that do not match, ...)."""


class VolumeError(ValueError):
    """An input volume that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str, kind: ErrorKind = "invalid"):
        self.path = str(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{printable(path)}: {reason}")


class Limits(NamedTuple):
    """How much one input may cost once decoded."""

    max_voxels: int = DEFAULT_MAX_VOXELS
    max_bytes: int = DEFAULT_MAX_BYTES


class ImageInfo(NamedTuple):
    """What a header says about an image, before its pixels are read."""

    size: tuple[int, ...]
    components: int
    bytes_per_voxel: int
    spacing: tuple[float, ...]


DEFAULT_LIMITS = Limits()


UNLIMITED = Limits(np.iinfo(np.int64).max, np.iinfo(np.int64).max)
"""No size limit (label files: their grid must equal an accepted CT's anyway)."""


def info_of(source: sitk.Image | sitk.ImageFileReader) -> ImageInfo:
    """The :class:`ImageInfo` of an image or of a reader after ``ReadImageInformation``."""
    size = tuple(int(s) for s in source.GetSize())
    pixel = source.GetPixelID() if isinstance(source, sitk.Image) else source.GetPixelIDValue()
    components = int(
        source.GetNumberOfComponentsPerPixel() if isinstance(source, sitk.Image) else source.GetNumberOfComponents()
    )
    return ImageInfo(size, components, components * _component_bytes(pixel), tuple(source.GetSpacing()))


def _component_bytes(pixel_id: int) -> int:
    """Bytes per component of a SimpleITK pixel type."""
    return sitk.GetArrayViewFromImage(sitk.Image([1, 1], pixel_id)).dtype.itemsize


def check_size(path: Path, shown: str, voxels: int, bytes_per_voxel: int, limits: Limits) -> None:
    if voxels > limits.max_voxels:
        raise VolumeError(path, f"absurd size {shown} ({voxels:,} voxels > limit {limits.max_voxels:,})", "too_large")
    if voxels * bytes_per_voxel > limits.max_bytes:
        raise VolumeError(
            path,
            f"absurd size {shown} ({voxels * bytes_per_voxel:,} bytes decoded > limit {limits.max_bytes:,})",
            "too_large",
        )


def check_shape(path: Path, info: ImageInfo, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse images that are not scalar 3-D volumes of a sane size and spacing."""
    size = info.size
    shown = "×".join(str(s) for s in size)
    if len(size) != 3:
        raise VolumeError(path, f"{len(size)}-D image (size {shown}); expected a 3-D volume", "not_3d")
    if info.components != 1:
        raise VolumeError(path, f"{info.components} components per voxel; expected a scalar image", "not_3d")
    if min(size) < 2:
        raise VolumeError(path, f"2-D image (size {shown}); expected a 3-D volume", "not_3d")
    check_size(path, shown, int(np.prod(size, dtype=np.int64)), info.bytes_per_voxel, limits)
    if min(info.spacing) <= 0:
        raise VolumeError(path, f"non-positive voxel spacing {info.spacing}", "geometry")


def check_ct_values(path: Path, array: np.ndarray) -> None:
    """Refuse arrays with non-finite values, or whose values do not look like CT in HU."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise VolumeError(path, "non-finite values (NaN or Inf) in the image", "not_ct")
    low = float(array.min())
    if low > CT_AIR_OR_FAT_HU:
        raise VolumeError(
            path, f"not a CT in HU: lowest value {low:g} > {CT_AIR_OR_FAT_HU:g} (no air or fat anywhere)", "not_ct"
        )


def hu_scale_warning(array: np.ndarray) -> str | None:
    """Why the values of a CT that passed :func:`check_ct_values` do not look like Hounsfield
    units (one line for the case's warnings), or None.

    The rule is CT physics, not a fit to scans: more than :data:`HU_OUTSIDE_SHARE` of the voxels
    lie outside :data:`HU_SCALE` widened by :data:`HU_SCALE_MARGIN` (-2024 to +4071). The
    volume's minimum is set aside when it lies below that range: scanners fill the corners outside
    their field of view with one padding value (-2048, -3024, -32768). The model was trained on
    HU; a rescaled scan (HU × 1000 puts air at -10^6) is segmented, but its masks mean little.
    """
    sample = np.ravel(array)[::HU_SAMPLE_STRIDE]
    low, high = HU_SCALE[0] - HU_SCALE_MARGIN, HU_SCALE[1] + HU_SCALE_MARGIN
    smallest, largest = float(sample.min()), float(sample.max())
    if smallest < low:
        sample = sample[sample != sample.min()]
    if not sample.size:
        return None
    outside = float(np.count_nonzero((sample < low) | (sample > high))) / sample.size
    if outside <= HU_OUTSIDE_SHARE:
        return None
    return (
        f"values are not plausible Hounsfield units: {outside:.0%} of the voxels lie outside {low:g} to {high:g} "
        f"(the CT scale {HU_SCALE[0]:g} to {HU_SCALE[1]:g} HU with {HU_SCALE_MARGIN:g} HU of margin; air is -1000 "
        f"HU), the scan holds {smallest:.4g} to {largest:.4g}: a rescaled image? The model expects HU; do not "
        "trust this mask"
    )


def check_path_names(path: Path) -> None:
    """Refuse a path, or a file directly in a folder ``path``, whose name is not UTF-8.

    SimpleITK (and GDCM, which lists a DICOM folder) cannot take such a name: it aborts the whole
    process, so the check comes before either sees the path. The message shows the odd bytes as
    ``\\xe9``.
    """
    if not is_utf8(path):
        raise VolumeError(path, "the path is not valid UTF-8 (shown with \\x escapes): rename it", "unreadable")
    if path.is_dir():
        odd = sorted(entry.name for entry in os.scandir(path) if not is_utf8(entry.name))
        if odd:
            shown = ", ".join(printable(name) for name in odd[:3]) + (
                f" and {len(odd) - 3} more" if len(odd) > 3 else ""
            )
            raise VolumeError(
                path / odd[0],
                f"file name(s) in the DICOM folder not valid UTF-8 (shown with \\x escapes): {shown}: rename them",
                "unreadable",
            )


def grid_difference(mine: Geometry, reference: Geometry) -> str:
    """The first of size, spacing, origin, direction that differs between two grids, both values shown."""
    for name in ("size", "spacing", "origin", "direction"):
        values, expected = np.asarray(getattr(mine, name), float), np.asarray(getattr(reference, name), float)
        if values.shape != expected.shape or not np.allclose(values, expected, atol=1e-4):
            shown = lambda v: "(" + ", ".join(f"{x:g}" for x in v) + ")"  # noqa: E731
            return f"{name} {shown(values)} vs {shown(expected)}"
    return "origin differs by more than a fraction of a voxel"


def first_itk_line(error: RuntimeError) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK messages start with a source location; the reason is on the last non-empty line.
    return lines[-1][:200] if lines else "unknown reason"
