"""Writing label maps and volumes as NIfTI carrying exactly their geometry, atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segcore.runtime.files import replace_atomically
from segcore.volumes.geometry import Geometry
from segcore.volumes.itk import to_image
from segcore.volumes.names import is_nifti


def write_volume(path: str | os.PathLike, array: np.ndarray, geometry: Geometry, *, compress: bool = True) -> None:
    """Write a ``(z, y, x)`` array as NIfTI carrying exactly ``geometry``, atomically.

    The file is written next to its destination under a temporary name and renamed, so a
    reader never sees a half-written file.
    """
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: expected a .nii or .nii.gz destination")
    path.parent.mkdir(parents=True, exist_ok=True)
    image = to_image(array, geometry)
    suffix = ".nii.gz" if str(path).lower().endswith(".nii.gz") else ".nii"  # ITK picks the format by name
    replace_atomically(path, lambda temporary: sitk.WriteImage(image, str(temporary), useCompression=compress), suffix)


def nifti_bytes_for_viewing(array: np.ndarray, geometry: Geometry) -> bytes:
    """A CT as the bytes of a ``.nii.gz`` file carrying ``geometry``, for a viewer (the web pages).

    Whole-number intensities (HU) are stored as int16 (clipped to its range), others as float32,
    with the fastest gzip level: the copy is made per request, read once and thrown away.
    """
    whole = np.issubdtype(array.dtype, np.integer) or bool(np.array_equal(array, np.round(array)))
    info = np.iinfo(np.int16)
    stored = np.clip(array, info.min, info.max).astype(np.int16) if whole else array.astype(np.float32)
    image = to_image(stored, geometry)
    with tempfile.TemporaryDirectory(prefix="viewing-") as folder:
        path = Path(folder) / "ct.nii.gz"
        sitk.WriteImage(image, str(path), True, 1)
        return path.read_bytes()
