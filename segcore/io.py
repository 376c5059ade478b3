"""Reading and writing CT volumes with exact geometry, and the input checks.

Reader contract: :func:`read_volume` returns ``(array, geometry)`` where ``array`` is a
numpy array in ``(z, y, x)`` order with the file's pixel type (HU for CT; SimpleITK
applies DICOM rescale slope/intercept and NIfTI ``scl_slope``), and ``geometry`` is a
:class:`segcore.geometry.Geometry`. :func:`write_volume` writes an array and a geometry
back so that the file carries exactly that size, spacing, origin and direction.

Every failure is a :class:`VolumeError` whose message names the file and the reason
in one line.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from segcore.geometry import Geometry
from segcore.labels import MAX_LABEL

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DEFAULT_MAX_VOXELS = 1024 * 1024 * 1024
"""Largest volume accepted by default (1 Gi voxels: 2 GiB as int16)."""
CT_AIR_OR_FAT_HU = -200.0
"""Any CT of a body holds air or fat below this HU; a volume with nothing below it is not a CT in HU."""


class VolumeError(ValueError):
    """An input volume that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether a path names a NIfTI file (``.nii`` or ``.nii.gz``)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def case_stem(path: str | os.PathLike) -> str:
    """File or folder name without its NIfTI suffix (``abc_0000.nii.gz`` -> ``abc_0000``)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def geometry_of(image: sitk.Image) -> Geometry:
    """The :class:`Geometry` of a 3-D SimpleITK image."""
    return Geometry(
        size=tuple(int(s) for s in image.GetSize()),
        spacing=tuple(float(s) for s in image.GetSpacing()),
        origin=tuple(float(o) for o in image.GetOrigin()),
        direction=tuple(float(d) for d in image.GetDirection()),
    )


def to_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image from a ``(z, y, x)`` array and its geometry."""
    if tuple(array.shape) != geometry.shape_zyx:
        raise ValueError(f"array shape {array.shape} does not match geometry size (z, y, x) {geometry.shape_zyx}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def _read_image(path: Path) -> sitk.Image:
    if not path.exists():
        raise VolumeError(path, "no such file or folder")
    if path.is_dir():
        return _read_dicom_series(path)
    if path.stat().st_size == 0:
        raise VolumeError(path, "empty file")
    if is_nifti(path):
        _check_nifti_payload(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise VolumeError(path, f"unreadable or truncated image ({_first_itk_line(error)})") from None


def _check_nifti_payload(path: Path) -> None:
    """Refuse truncated or corrupt NIfTI files and float data with NaN/Inf.

    ITK reads a truncated ``.nii.gz`` without complaint (the missing voxels come back as 0)
    and turns NaN/Inf into 0, so both are checked here on the raw payload.
    """
    try:
        image = nib.load(path)
        expected = (
            int(image.dataobj.offset) + int(np.prod(image.shape, dtype=np.int64)) * image.get_data_dtype().itemsize
        )
    except Exception as error:  # nibabel raises several types for a bad header
        raise VolumeError(path, f"unreadable NIfTI header ({type(error).__name__}: {error})") from None
    if str(path).lower().endswith(".gz"):
        available = 0
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 24):
                    available += len(chunk)
        except (EOFError, OSError, zlib.error) as error:
            raise VolumeError(path, f"truncated or corrupt gzip stream ({error})") from None
    else:
        available = path.stat().st_size
    if available < expected:
        raise VolumeError(path, f"truncated file: {available:,} of {expected:,} bytes")
    if np.issubdtype(image.get_data_dtype(), np.floating) and not np.isfinite(np.asanyarray(image.dataobj)).all():
        raise VolumeError(path, "non-finite values (NaN or Inf) in the image")


def _first_itk_line(error: RuntimeError) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK messages start with a source location; the reason is on the last non-empty line.
    return lines[-1][:200] if lines else "unknown reason"


def dicom_series(folder: Path) -> list[str]:
    """The files of the one DICOM series in ``folder``, sorted by slice position along its normal.

    Raises:
        VolumeError: when the folder holds no series or more than one.
    """
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as error:
        raise VolumeError(folder, f"unreadable DICOM folder ({_first_itk_line(error)})") from None
    if len(series_ids) != 1:
        what = "no DICOM series" if not series_ids else f"{len(series_ids)} DICOM series (expected one)"
        raise VolumeError(folder, f"folder holds {what}")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0]))
    return _sorted_by_position(folder, files)


def _sorted_by_position(folder: Path, files: list[str]) -> list[str]:
    """Sort slices by their Image Position (Patient) projected on the slice normal."""
    positions = []
    normal = None
    reader = sitk.ImageFileReader()
    for name in files:
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise VolumeError(name, f"unreadable DICOM file ({_first_itk_line(error)})") from None
        if normal is None:
            direction = np.asarray(reader.GetDirection()).reshape(3, 3)
            normal = direction[:, 2]
        positions.append(float(np.dot(normal, reader.GetOrigin())))
    if len(set(np.round(positions, 4))) != len(positions):
        raise VolumeError(folder, "DICOM series has slices at duplicate positions")
    return [name for _, name in sorted(zip(positions, files))]


def _read_dicom_series(folder: Path) -> sitk.Image:
    files = dicom_series(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise VolumeError(folder, f"unreadable DICOM series ({_first_itk_line(error)})") from None


def read_volume(
    path: str | os.PathLike,
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    check_ct: bool = True,
) -> tuple[np.ndarray, Geometry]:
    """Read a CT volume: a ``.nii``/``.nii.gz`` file or a folder holding one DICOM series.

    Args:
        path: the file or DICOM folder.
        max_voxels: refuse volumes with more voxels than this.
        check_ct: also check that the values look like CT in HU (finite, something below
            :data:`CT_AIR_OR_FAT_HU`).

    Returns:
        ``(array, geometry)``: the ``(z, y, x)`` array and its :class:`Geometry`.

    Raises:
        VolumeError: unreadable or truncated file, not 3-D, not scalar, too large,
            non-finite values, or (with ``check_ct``) not a CT.
    """
    path = Path(path)
    image = _read_image(path)
    check_shape(path, image, max_voxels=max_voxels)
    array = sitk.GetArrayFromImage(image)
    if check_ct:
        check_ct_values(path, array)
    return array, geometry_of(image)


def check_shape(path: Path, image: sitk.Image, *, max_voxels: int = DEFAULT_MAX_VOXELS) -> None:
    """Refuse images that are not scalar 3-D volumes of a sane size."""
    size = image.GetSize()
    shown = "×".join(str(s) for s in size)
    if image.GetDimension() != 3:
        raise VolumeError(path, f"{image.GetDimension()}-D image (size {shown}); expected a 3-D volume")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(
            path, f"{image.GetNumberOfComponentsPerPixel()} components per voxel; expected a scalar image"
        )
    if min(size) < 2:
        raise VolumeError(path, f"2-D image (size {shown}); expected a 3-D volume")
    voxels = int(np.prod(size, dtype=np.int64))
    if voxels > max_voxels:
        raise VolumeError(path, f"absurd size {shown} ({voxels:,} voxels > limit {max_voxels:,})")
    if min(image.GetSpacing()) <= 0:
        raise VolumeError(path, f"non-positive voxel spacing {image.GetSpacing()}")


def check_ct_values(path: Path, array: np.ndarray) -> None:
    """Refuse arrays with non-finite values, or whose values do not look like CT in HU."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise VolumeError(path, "non-finite values (NaN or Inf) in the image")
    low = float(array.min())
    if low > CT_AIR_OR_FAT_HU:
        raise VolumeError(path, f"not a CT in HU: lowest value {low:g} > {CT_AIR_OR_FAT_HU:g} (no air or fat anywhere)")


def read_label(
    path: str | os.PathLike, reference: Geometry, *, image_path: str | os.PathLike | None = None
) -> np.ndarray:
    """Read a label volume that must lie on the grid of its CT.

    Args:
        path: the label file.
        reference: geometry of the CT the labels belong to.
        image_path: the CT's path, named in the grid-mismatch error.

    Returns:
        The ``(z, y, x)`` uint8 label array.

    Raises:
        VolumeError: unreadable, not 3-D, grid differs from the CT, non-integer values or
            labels outside ``0..13``.
    """
    path = Path(path)
    image = _read_image(path)
    check_shape(path, image, max_voxels=np.iinfo(np.int64).max)
    geometry = geometry_of(image)
    if not geometry.same_grid(reference):
        against = f" of {image_path}" if image_path else ""
        raise VolumeError(
            path, f"label grid differs from the CT grid{against}: {_grid_difference(geometry, reference)}"
        )
    array = sitk.GetArrayFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise VolumeError(path, "label values are not integers")
    low, high = array.min(), array.max()
    if low < 0 or high > MAX_LABEL:
        raise VolumeError(path, f"labels outside 0..{MAX_LABEL} (found {low:g}..{high:g})")
    return array.astype(np.uint8)


def _grid_difference(geometry: Geometry, reference: Geometry) -> str:
    for name in ("size", "spacing", "origin", "direction"):
        mine, theirs = getattr(geometry, name), getattr(reference, name)
        if not np.allclose(mine, theirs, atol=1e-4):
            fmt = lambda values: "(" + ", ".join(f"{v:g}" for v in values) + ")"  # noqa: E731
            return f"{name} {fmt(mine)} vs {fmt(theirs)}"
    return "origin differs by more than the tolerance"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it and a rename (never a half file)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_volume(path: str | os.PathLike, array: np.ndarray, geometry: Geometry, *, compress: bool = True) -> None:
    """Write a ``(z, y, x)`` array as NIfTI carrying exactly ``geometry``, atomically.

    The file is written next to its destination under a temporary name and renamed, so a
    reader never sees a half-written file.
    """
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: expected a .nii or .nii.gz destination")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if str(path).lower().endswith(".nii.gz") else ".nii"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        sitk.WriteImage(to_image(array, geometry), str(temporary), useCompression=compress)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
