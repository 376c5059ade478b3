"""Writing label maps and volumes as NIfTI carrying exactly their geometry, atomically."""

from __future__ import annotations

import os
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
