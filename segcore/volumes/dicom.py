"""DICOM series: the one series of a folder, its slices sorted along the normal and checked for
even spacing, read as one volume."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segcore.volumes.checks import ImageInfo, Limits, VolumeError, check_size, first_itk_line, info_of

UNIFORM_SLICE_TOLERANCE = 0.01
"""Largest departure of a DICOM slice gap from the series' median gap, as a share of it."""


def _series_headers(folder: Path) -> list[tuple[str, ImageInfo]]:
    """The one DICOM series in ``folder``: ``(file, header info)`` sorted by slice position."""
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
    slices = []
    normal = None
    reader = sitk.ImageFileReader()
    for name in files:
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise VolumeError(name, f"unreadable DICOM file ({first_itk_line(error)})", "unreadable") from None
        if normal is None:
            direction = np.asarray(reader.GetDirection()).reshape(3, 3)
            normal = direction[:, 2]
        slices.append((float(np.dot(normal, reader.GetOrigin())), name, info_of(reader)))
    if len({round(position, 4) for position, _, _ in slices}) != len(slices):
        raise VolumeError(folder, "DICOM series has slices at duplicate positions", "geometry")
    slices.sort()
    _check_uniform_spacing(folder, [position for position, _, _ in slices])
    return [(name, info) for _, name, info in slices]


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
