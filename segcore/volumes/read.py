"""Reading CT volumes and label maps with exact geometry.

Reader contract: :func:`read_volume` returns ``(array, geometry)`` where ``array`` is a numpy
array in ``(z, y, x)`` order with the file's pixel type (HU for CT; SimpleITK applies DICOM
rescale slope/intercept and NIfTI ``scl_slope``), and ``geometry`` is a
:class:`~segcore.volumes.geometry.Geometry`. Label maps: :func:`read_label_map` reads one on its
own; :func:`read_labels_on_grid` reads one that must lie on its CT's grid.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segcore.labels import MAX_LABEL
from segcore.volumes.checks import (
    DEFAULT_LIMITS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_VOXELS,
    UNLIMITED,
    Limits,
    VolumeError,
    check_ct_values,
    check_path_names,
    check_shape,
    first_itk_line,
    grid_difference,
    info_of,
)
from segcore.volumes.dicom import read_series
from segcore.volumes.geometry import Geometry
from segcore.volumes.itk import geometry_of
from segcore.volumes.nifti import check_payload, header_checked_reader, is_unscaled, read_voxels


def _read_array(path: Path, limits: Limits) -> tuple[np.ndarray, Geometry]:
    """The ``(z, y, x)`` voxels and grid of a checked file or DICOM folder.

    An unscaled NIfTI file is decompressed once, with ISA-L, straight into the array (the grid is
    ITK's reading of the header); anything else goes through ITK.
    """
    if not path.exists():
        raise VolumeError(path, "no such file or folder", "unreadable")
    check_path_names(path)
    if path.is_dir():
        return _image_array(path, read_series(path, limits), limits)
    reader, nifti = header_checked_reader(path, limits)
    if nifti is not None and is_unscaled(nifti):
        return read_voxels(path, nifti, reader.GetSize()), geometry_of(reader)
    if nifti is not None:
        check_payload(path, nifti)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise VolumeError(path, f"unreadable or truncated image ({first_itk_line(error)})", "unreadable") from None
    return _image_array(path, image, limits)


def _image_array(path: Path, image: sitk.Image, limits: Limits) -> tuple[np.ndarray, Geometry]:
    image = _without_trailing_singletons(image)
    check_shape(path, info_of(image), limits)
    return sitk.GetArrayFromImage(image), geometry_of(image)


def _without_trailing_singletons(image: sitk.Image) -> sitk.Image:
    """A 3-D volume stored with extra axes of size 1 (x, y, z, 1) as the 3-D volume it is."""
    while image.GetDimension() > 3 and image.GetSize()[-1] == 1:
        image = image[(slice(None),) * (image.GetDimension() - 1) + (0,)]
    return image


def read_volume(
    path: str | os.PathLike,
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    check_ct: bool = True,
) -> tuple[np.ndarray, Geometry]:
    """Read a CT volume: a ``.nii``/``.nii.gz`` file or a folder holding one DICOM series.

    Args:
        path: the file or DICOM folder.
        max_voxels: refuse volumes with more voxels than this (from the headers, before decoding).
        max_bytes: refuse volumes whose decoded pixel data is larger than this.
        check_ct: also check that the values look like CT in HU (finite, something below
            :data:`CT_AIR_OR_FAT_HU`).

    Returns:
        ``(array, geometry)``: the ``(z, y, x)`` array and its :class:`Geometry`.

    Raises:
        VolumeError: a path that is not UTF-8, unreadable or truncated file, not 3-D, not scalar, too large, impossible
            spacing, NIfTI qform/sform that disagree, non-finite values, or (with ``check_ct``) not a CT.
    """
    path = Path(path)
    array, geometry = _read_array(path, Limits(max_voxels, max_bytes))
    if check_ct:
        check_ct_values(path, array)
    return array, geometry


def read_image(
    image: sitk.Image, name: str = "image", *, limits: Limits = DEFAULT_LIMITS
) -> tuple[np.ndarray, Geometry]:
    """:func:`read_volume`'s checks for an image already in memory (named ``name`` in errors): a scalar
    3-D volume of a sane size and spacing, finite values that look like CT in HU.

    Returns:
        ``(array, geometry)`` as :func:`read_volume` does.
    """
    array, geometry = _image_array(Path(name), image, limits)
    check_ct_values(Path(name), array)
    return array, geometry


def read_label_map(path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS) -> tuple[np.ndarray, Geometry]:
    """Read a label map: a ``(z, y, x)`` uint8 array of FLARE22 ids and its geometry.

    Raises:
        VolumeError: unreadable, not 3-D, over ``limits``, non-integer values or labels outside ``0..13``.
    """
    path = Path(path)
    array, geometry = _read_array(path, limits)
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise VolumeError(path, "label values are not integers")
    low, high = array.min(), array.max()
    if low < 0 or high > MAX_LABEL:
        raise VolumeError(path, f"labels outside 0..{MAX_LABEL} (found {low:g}..{high:g})")
    return array.astype(np.uint8), geometry


def read_labels_on_grid(
    path: str | os.PathLike, reference: Geometry, *, image_path: str | os.PathLike | None = None
) -> np.ndarray:
    """Read a label volume that must lie on the grid of its CT (:func:`read_label_map`, then the grid).

    Args:
        path: the label file.
        reference: geometry of the CT the labels belong to.
        image_path: the CT's path, named in the grid-mismatch error.

    Returns:
        The ``(z, y, x)`` uint8 label array.

    Raises:
        VolumeError: as :func:`read_label_map`, or the grid differs from the CT.
    """
    array, geometry = read_label_map(path, limits=UNLIMITED)  # the CT passed the limits; its labels follow it
    if not geometry.same_grid(reference):
        against = f" of {image_path}" if image_path else ""
        difference = grid_difference(geometry, reference)
        raise VolumeError(path, f"label grid differs from the CT grid{against}: {difference}")
    return array
