"""DICOM series: the one series of a folder, its slices checked to share one orientation, pixel
spacing and size, sorted along the normal and checked for even spacing, read as one volume."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segcore.volumes.checks import (
    ImageInfo,
    Limits,
    VolumeError,
    check_path_names,
    check_size,
    first_itk_line,
    info_of,
)
from segcore.volumes.names import printable

UNIFORM_SLICE_TOLERANCE = 0.01
"""Largest departure of a DICOM slice gap from the series' median gap, as a share of it."""


SLICE_DIRECTION_TOLERANCE = 1e-4
"""Largest difference between two slices' direction cosines (Image Orientation (Patient)): about
0.006°, 0.03 mm at the edge of a 500 mm field. The decimal strings DICOM stores round cosines to
1e-6 or finer, so equal orientations always pass and a turned slice (even by a tenth of a degree) never."""


SLICE_SPACING_TOLERANCE_MM = 1e-4
"""Largest difference between two slices' Pixel Spacing, in mm: 0.05 mm over 512 pixels, far above
the rounding of its decimal strings."""


SHOWN = 3
"""How many odd slices a refusal names (then how many more there are)."""


IN_PLANE_TOLERANCE = 0.05
"""A slice may sit this share of a pixel off the first slice's axis (decimal rounding of Image
Position (Patient)); farther, the series is refused (:func:`_check_stacked_along_normal`)."""


def _series_headers(folder: Path) -> list[tuple[str, ImageInfo]]:
    """The one DICOM series in ``folder``: ``(file, header info)`` sorted by slice position."""
    check_path_names(folder)  # GDCM aborts the process on a file name that is not UTF-8
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as error:
        raise VolumeError(folder, f"unreadable DICOM folder ({first_itk_line(error)})", "unreadable") from None
    if len(series_ids) != 1:
        what = "no DICOM series" if not series_ids else f"{len(series_ids)} DICOM series (expected one)"
        raise VolumeError(folder, f"folder holds {what}", "unreadable" if not series_ids else "invalid")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0]))
    return _sorted_by_position(folder, files)


def dicom_series_files(folder: str | os.PathLike) -> list[Path]:
    """The files of the one DICOM series in ``folder``, in the order :func:`read_volume` stacks them (z)."""
    return [Path(name) for name, _ in _series_headers(Path(folder))]


def _sorted_by_position(folder: Path, files: list[str]) -> list[tuple[str, ImageInfo]]:
    """Sort slices by their Image Position (Patient) projected on the slice normal."""
    headers = []
    reader = sitk.ImageFileReader()
    for name in files:
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise VolumeError(name, f"unreadable DICOM file ({first_itk_line(error)})", "unreadable") from None
        headers.append((name, info_of(reader), reader.GetDirection(), reader.GetOrigin()))
    _check_slices_agree(folder, headers)
    direction = np.asarray(headers[0][2]).reshape(3, 3)
    slices = [(float(np.dot(direction[:, 2], origin)), name, info, origin) for name, info, _, origin in headers]
    if len({round(position, 4) for position, *_ in slices}) != len(slices):
        raise VolumeError(folder, "DICOM series has slices at duplicate positions", "geometry")
    slices.sort(key=lambda entry: entry[0])
    _check_uniform_spacing(folder, [position for position, *_ in slices])
    _check_stacked_along_normal(folder, [(name, origin) for _, name, _, origin in slices], direction, headers[0][1])
    return [(name, info) for _, name, info, _ in slices]


def _check_stacked_along_normal(
    folder: Path, slices: list[tuple[str, tuple]], direction: np.ndarray, info: ImageInfo
) -> None:
    """Refuse a series whose slices are not stacked along their normal: a slice moved in its own
    plane (a moved table) or every slice drifting (a gantry tilt). ITK stacks them on the first
    slice's grid, which would put the moved voxels, scan and mask alike, where the patient was not.
    Differences below :data:`IN_PLANE_TOLERANCE` of a pixel (decimal rounding of the positions) pass."""
    first = np.asarray(slices[0][1], float)
    offsets = [np.abs(direction[:, :2].T @ (np.asarray(origin, float) - first)) for _, origin in slices]
    tolerance = IN_PLANE_TOLERANCE * np.asarray(info.spacing[:2], float)
    odd = [(name, offset) for (name, _), offset in zip(slices, offsets, strict=True) if (offset > tolerance).any()]
    if odd:
        shown = ", ".join(f"{name} ({float(offset.max()):.3g} mm)" for name, offset in odd[:3])
        more = f" and {len(odd) - 3} more" if len(odd) > 3 else ""
        raise VolumeError(
            folder,
            f"DICOM slices are not stacked along their normal: {shown}{more} lie off the first slice's axis "
            "in their own plane (a moved table or a gantry tilt); resample the series to a regular grid first",
            "geometry",
        )


def _check_slices_agree(folder: Path, headers: list[tuple[str, ImageInfo, tuple, tuple]]) -> None:
    """Refuse a series whose slices differ in orientation, pixel spacing or size.

    ITK stacks the slices with the first one's grid: a slice turned by 90° or 8°, or sampled
    more finely, would be read as if it matched and segmented where it is not. Each property is
    compared with the value most slices share; the refusal names the odd files and what differs.
    """
    if len(headers) < 2:
        return
    properties = {
        "orientation (row and column direction cosines)": (
            [np.asarray(direction, float).reshape(3, 3)[:, :2].T.ravel() for _, _, direction, _ in headers],
            SLICE_DIRECTION_TOLERANCE,
        ),
        "pixel spacing (mm)": (
            [np.asarray(info.spacing[:2], float) for _, info, _, _ in headers],
            SLICE_SPACING_TOLERANCE_MM,
        ),
        "size (columns, rows, frames)": ([np.asarray(info.size, float) for _, info, _, _ in headers], 0.5),
    }
    differences = []
    for what, (values, tolerance) in properties.items():
        reference, odd = _odd_ones(np.stack(values), tolerance)
        if len(odd):
            named = "; ".join(f"{printable(Path(headers[i][0]).name)} has {_shown(values[i])}" for i in odd[:SHOWN])
            more = f" and {len(odd) - SHOWN} more" if len(odd) > SHOWN else ""
            differences.append(
                f"{what}: {named}{more}, where {len(values) - len(odd)} slice(s) have {_shown(reference)}"
            )
    if differences:
        raise VolumeError(folder, f"DICOM slices do not match the series: {' | '.join(differences)}", "geometry")


def _odd_ones(values: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """The value most rows of ``values`` share (within ``tolerance``) and the indices of the rows
    that differ from it by more."""
    keys = [tuple(row) for row in np.round(values / tolerance).astype(np.int64)]
    reference = values[keys.index(Counter(keys).most_common(1)[0][0])]
    return reference, np.flatnonzero(np.abs(values - reference).max(axis=1) > tolerance)


def _shown(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{value:.6g}" for value in values) + ")"


def _check_uniform_spacing(folder: Path, positions: list[float]) -> None:
    """Refuse a series whose slices are not evenly spaced (missing slices, a varying step).

    A volume has one z spacing: read as one, such a series would put every slice after the gap
    at the wrong place, in the mask as much as in the scan (ITK only warns). Refused rather than
    resampled: the mask could then not be written back on the original slices exactly.
    """
    if len(positions) < 3:
        return
    gaps = np.diff(positions)
    step = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - step)))
    if abs(gaps[worst] - step) > max(UNIFORM_SLICE_TOLERANCE * step, 1e-3):
        raise VolumeError(
            folder,
            f"non-uniform slice spacing: slices are {step:.4g} mm apart but {gaps[worst]:.4g} mm between slice "
            f"{worst + 1} and {worst + 2} of {len(positions)} (missing slices or a varying step); resample the "
            "series to even spacing first",
            "geometry",
        )


def read_series(folder: Path, limits: Limits) -> sitk.Image:
    series = _series_headers(folder)
    if len(series) == 1:  # one file: a single slice or a multi-frame (enhanced) volume, read as a file
        reader = sitk.ImageFileReader()
        reader.SetFileName(series[0][0])
        size = series[0][1].size
    else:  # slices stack along z
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([name for name, _ in series])
        size = (*series[0][1].size[:2], len(series))
    shown = "×".join(str(s) for s in size)
    check_size(folder, shown, int(np.prod(size, dtype=np.int64)), series[0][1].bytes_per_voxel, limits)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise VolumeError(folder, f"unreadable DICOM series ({first_itk_line(error)})", "unreadable") from None
