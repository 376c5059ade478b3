"""Reading and writing CT volumes with exact geometry, and the input checks.

Reader contract: :func:`read_volume` returns ``(array, geometry)`` where ``array`` is a
numpy array in ``(z, y, x)`` order with the file's pixel type (HU for CT; SimpleITK
applies DICOM rescale slope/intercept and NIfTI ``scl_slope``), and ``geometry`` is a
:class:`segcore.geometry.Geometry`. :func:`write_volume` writes an array and a geometry
back so that the file carries exactly that size, spacing, origin and direction.

Every failure is a :class:`VolumeError` whose message names the file and the reason
in one line, and whose ``kind`` says what went wrong (:data:`ErrorKind`).

Order of the checks: everything that can be refused from the headers (dimensions, voxel and
byte counts, spacing, NIfTI qform/sform agreement, DICOM rows × columns × slices) is refused
before a voxel is decoded, so a 2 KB file that claims 2 GB costs nothing.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NamedTuple

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from isal import igzip, isal_zlib

from segcore.geometry import Geometry
from segcore.labels import MAX_LABEL

NIFTI_SUFFIXES = (".nii.gz", ".nii")
CHANNEL_SUFFIX = "_0000"
"""FLARE / nnU-Net image names end with the channel index: ``<id>_0000.nii.gz``."""
READ_CHUNK_BYTES = 8 * 1024 * 1024
"""Voxels are decompressed into the array this much at a time: gzip readers copy through a
temporary of the size asked for (a 157 MB CT read in one call took 308 MB)."""
DEFAULT_MAX_VOXELS = 1024 * 1024 * 1024
"""Largest volume accepted by default (1 Gi voxels: 2 GiB as int16)."""
DEFAULT_MAX_BYTES = 2 * 1024 * 1024 * 1024
"""Largest decoded pixel data accepted by default (voxels × bytes per voxel)."""
SPACING_RANGE_MM = (0.01, 50.0)
"""Voxel sizes outside this range are header errors, not scans (ITK would silently use 1 mm for 0)."""
NIFTI_PLACEMENT_FIELDS = (
    "pixdim", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z"
)  # fmt: skip
"""NIfTI header fields that place the grid in space; an Inf in ``srow_y`` hangs ITK's reader for good."""
UNIFORM_SLICE_TOLERANCE = 0.01
"""Largest departure of a DICOM slice gap from the series' median gap, as a share of it."""
PLACEMENT_TOLERANCE_VOXELS = 0.05
"""Largest disagreement, in voxels, between where ITK and nibabel put a corner of a NIfTI grid."""
NIFTI_MAX_EXTENSION_BYTES = 64 * 1024 * 1024
"""Largest gap between a single-file NIfTI's header and its voxels (header extensions)."""
CT_AIR_OR_FAT_HU = -200.0
"""Any CT of a body holds air or fat below this HU; a volume with nothing below it is not a CT in HU."""


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
        super().__init__(f"{self.path}: {reason}")


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether a path names a NIfTI file (``.nii`` or ``.nii.gz``)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def case_id(path: str | os.PathLike) -> str:
    """A FLARE / nnU-Net case id: the name without NIfTI suffix and without the trailing channel
    index :data:`CHANNEL_SUFFIX` (``FLARE22_Tr_0001_0000.nii.gz`` -> ``FLARE22_Tr_0001``); other
    names keep their stem."""
    return case_stem(path).removesuffix(CHANNEL_SUFFIX)


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


def _info_of(source: sitk.Image | sitk.ImageFileReader) -> ImageInfo:
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


def _read_array(path: Path, limits: Limits) -> tuple[np.ndarray, Geometry]:
    """The ``(z, y, x)`` voxels and grid of a checked file or DICOM folder.

    An unscaled NIfTI file is decompressed once, with ISA-L, straight into the array (the grid is
    ITK's reading of the header); anything else goes through ITK.
    """
    if not path.exists():
        raise VolumeError(path, "no such file or folder", "unreadable")
    if path.is_dir():
        return _image_array(path, _read_dicom_series(path, limits), limits)
    reader, nifti = _header_checked_reader(path, limits)
    if nifti is not None and _raw_voxels(nifti):
        return _nifti_voxels(path, nifti, reader.GetSize()), geometry_of(reader)
    if nifti is not None:
        _check_nifti_payload(path, nifti)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise VolumeError(path, f"unreadable or truncated image ({_first_itk_line(error)})", "unreadable") from None
    return _image_array(path, image, limits)


def _image_array(path: Path, image: sitk.Image, limits: Limits) -> tuple[np.ndarray, Geometry]:
    image = _without_trailing_singletons(image)
    check_shape(path, _info_of(image), limits)
    return sitk.GetArrayFromImage(image), geometry_of(image)


def _raw_voxels(image: nib.Nifti1Image) -> bool:
    """Whether the stored values are the voxels (no ``scl_slope``/``scl_inter`` to apply)."""
    # nibabel moves scl_slope/scl_inter from the loaded header into the array proxy.
    return float(image.dataobj.slope) == 1.0 and float(image.dataobj.inter) == 0.0


def _nifti_voxels(path: Path, image: nib.Nifti1Image, size_xyz: tuple[int, ...]) -> np.ndarray:
    """The voxels of an unscaled NIfTI file as a ``(z, y, x)`` array (x varies fastest on disk, as in
    a C-ordered ``(z, y, x)`` array: no transpose), refusing truncation and NaN/Inf."""
    dtype = image.get_data_dtype()
    expected = int(np.prod(size_xyz, dtype=np.int64)) * dtype.itemsize
    buffer = bytearray(expected)
    view, filled = memoryview(buffer), 0
    try:
        with _open_payload(path) as stream:
            stream.seek(int(image.dataobj.offset))
            while filled < expected and (count := stream.readinto(view[filled : filled + READ_CHUNK_BYTES])):
                filled += count
    except (EOFError, OSError, zlib.error, isal_zlib.error) as error:
        raise VolumeError(path, f"truncated or corrupt gzip stream ({error})", "unreadable") from None
    if filled < expected:
        raise VolumeError(path, f"truncated file: {filled:,} of {expected:,} bytes", "unreadable")
    array = np.frombuffer(buffer, dtype=dtype).reshape(tuple(reversed(size_xyz)))
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    if np.issubdtype(dtype, np.floating) and not np.isfinite(array).all():
        raise VolumeError(path, "non-finite values (NaN or Inf) in the image", "not_ct")
    return array


def _open_payload(path: Path):
    """The file's bytes, decompressed (ISA-L's gzip, several times faster than zlib) when ``.gz``."""
    return igzip.open(path, "rb") if str(path).lower().endswith(".gz") else open(path, "rb")


def check_file_header(
    path: str | os.PathLike, *, max_voxels: int = DEFAULT_MAX_VOXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> ImageInfo:
    """Every check of :func:`read_volume` that needs only an image file's header (milliseconds,
    whatever the file claims): a server runs it before queueing the work. Returns what the
    header says (size, bytes per voxel)."""
    path = Path(path)
    if not path.is_file():
        raise VolumeError(path, "no such file", "unreadable")
    reader, _ = _header_checked_reader(path, Limits(max_voxels, max_bytes))
    return _info_of(reader)


def _header_checked_reader(path: Path, limits: Limits) -> tuple[sitk.ImageFileReader, nib.Nifti1Image | None]:
    """A reader whose header passed every check (size, spacing, placement), and the NIfTI header if any."""
    if path.stat().st_size == 0:
        raise VolumeError(path, "empty file", "unreadable")
    nifti = None
    if is_nifti(path):
        raw = _raw_header(path)
        _check_payload_offset(path, raw)
        nifti = _nifti_header(path)
        _check_nifti_header(path, nifti, raw, limits)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise VolumeError(path, f"unreadable or truncated image ({_first_itk_line(error)})", "unreadable") from None
    check_shape(path, _info_of(reader), limits)
    if nifti is not None:
        _check_nifti_placement(path, nifti, geometry_of(reader))
    return reader, nifti


def _nifti_header(path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    """The NIfTI image as nibabel opens it (header only; no voxel is read)."""
    try:
        image = nib.load(path)
    except Exception as error:  # nibabel raises several types for a bad header
        raise VolumeError(path, f"unreadable NIfTI header ({error})", "unreadable") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise VolumeError(path, f"not a NIfTI-1/2 file ({type(image).__name__})", "unreadable")
    return image


def _check_nifti_header(path: Path, image: nib.Nifti1Image, raw: nib.Nifti1Header, limits: Limits) -> None:
    """Size and spacing from the NIfTI header: voxels, bytes, and pixdim of the spatial axes."""
    shape = tuple(int(s) for s in image.shape)
    itemsize = image.get_data_dtype().itemsize
    _check_size(path, "×".join(str(s) for s in shape), int(np.prod(shape, dtype=np.int64)), itemsize, limits)
    placement = np.concatenate([raw[field].ravel() for field in NIFTI_PLACEMENT_FIELDS]).astype(np.float64)
    if not np.isfinite(placement).all():
        bad = [field for field in NIFTI_PLACEMENT_FIELDS if not np.isfinite(raw[field]).all()]
        raise VolumeError(path, f"non-finite values in the header's {', '.join(bad)}", "geometry")
    pixdim = raw["pixdim"][1 : 1 + min(len(shape), 3)].astype(np.float64)
    low, high = SPACING_RANGE_MM
    if not (np.isfinite(pixdim).all() and (pixdim >= low).all() and (pixdim <= high).all()):
        shown = ", ".join(f"{value:g}" for value in pixdim)
        raise VolumeError(
            path, f"impossible voxel spacing in pixdim ({shown}); expected {low:g} to {high:g} mm", "geometry"
        )


def _check_payload_offset(path: Path, raw: nib.Nifti1Header) -> None:
    """The voxels of a ``.nii`` file start after its header (352 bytes for NIfTI-1, 544 for
    NIfTI-2, plus extensions): a smaller ``vox_offset`` would read header bytes as voxels, and
    ITK and nibabel repair it differently (a shifted mask, placed differently in each viewer)."""
    offset, first = float(raw["vox_offset"]), type(raw).single_vox_offset
    if not (math.isfinite(offset) and first <= offset <= first + NIFTI_MAX_EXTENSION_BYTES):
        raise VolumeError(
            path,
            f"the header's vox_offset ({offset:g}) does not place the voxels after the header: expected "
            f"{first} to {first + NIFTI_MAX_EXTENSION_BYTES:,} bytes",
            "unreadable",
        )


def _raw_header(path: Path) -> nib.Nifti1Header | nib.Nifti2Header:
    """The header as stored: nibabel's loader silently turns a 0 pixdim into 1, negatives into
    their absolute value and a 0 ``vox_offset`` into 352."""
    # The standard library's gzip, which decodes only what it returns: ISA-L's reads ahead and
    # would fail a truncated file here, before the payload check can say it is truncated.
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read(nib.Nifti2Header.sizeof_hdr)
        sizeof_hdr = int.from_bytes(raw[:4], "little")
        kind = (
            nib.Nifti2Header
            if nib.Nifti2Header.sizeof_hdr in (sizeof_hdr, int.from_bytes(raw[:4], "big"))
            else nib.Nifti1Header
        )
        header = kind.from_fileobj(io.BytesIO(raw[: kind.sizeof_hdr]), check=False)
    except (EOFError, OSError, zlib.error, ValueError) as error:
        raise VolumeError(path, f"unreadable NIfTI header ({error})", "unreadable") from None
    return header


def _check_size(path: Path, shown: str, voxels: int, bytes_per_voxel: int, limits: Limits) -> None:
    if voxels > limits.max_voxels:
        raise VolumeError(path, f"absurd size {shown} ({voxels:,} voxels > limit {limits.max_voxels:,})", "too_large")
    if voxels * bytes_per_voxel > limits.max_bytes:
        raise VolumeError(
            path,
            f"absurd size {shown} ({voxels * bytes_per_voxel:,} bytes decoded > limit {limits.max_bytes:,})",
            "too_large",
        )


def _check_nifti_placement(path: Path, image: nib.Nifti1Image, geometry: Geometry) -> None:
    """Refuse a NIfTI file that ITK and nibabel would place differently.

    The mask is written with ITK's reading of the grid; a nibabel user must see it on the scan.
    They disagree when the sform and qform differ (ITK may pass over a sheared or scaled sform
    that nibabel takes) or when ITK repairs the header; the message names the forms and codes.
    """
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in geometry.size], indexing="ij")).reshape(3, -1).T
    itk_world = geometry.index_to_physical(corners) * np.array([-1.0, -1.0, 1.0])  # LPS -> RAS
    nib_world = nib.affines.apply_affine(image.affine, corners)
    apart = float(np.linalg.norm(itk_world - nib_world, axis=1).max())
    if apart > PLACEMENT_TOLERANCE_VOXELS * min(geometry.spacing):
        header = image.header
        codes = f"qform_code {int(header['qform_code'])}, sform_code {int(header['sform_code'])}"
        raise VolumeError(
            path,
            f"ambiguous orientation: the qform and sform ({codes}) place voxels up to {apart:.3g} mm apart "
            "as SimpleITK and nibabel read them; fix the header so that both agree",
            "geometry",
        )


def _check_nifti_payload(path: Path, image: nib.Nifti1Image) -> None:
    """Refuse truncated or corrupt NIfTI files and float data with NaN/Inf, streaming the payload.

    ITK reads a truncated ``.nii.gz`` without complaint (the missing voxels come back as 0)
    and turns NaN/Inf into 0, so both are checked here on the raw bytes, a chunk at a time.
    """
    dtype = image.get_data_dtype()
    expected = int(np.prod(image.shape, dtype=np.int64)) * dtype.itemsize
    floating = np.issubdtype(dtype, np.floating)
    available, pending, finite = 0, b"", True
    try:
        with _open_payload(path) as stream:
            stream.seek(int(image.dataobj.offset))
            while (chunk := stream.read(1 << 24)) and available < expected:
                chunk = chunk[: expected - available]
                available += len(chunk)
                if floating and finite:
                    pending += chunk
                    whole = len(pending) - len(pending) % dtype.itemsize
                    finite = bool(np.isfinite(np.frombuffer(pending[:whole], dtype)).all())
                    pending = pending[whole:]
    except (EOFError, OSError, zlib.error, isal_zlib.error) as error:
        raise VolumeError(path, f"truncated or corrupt gzip stream ({error})", "unreadable") from None
    if available < expected:
        raise VolumeError(path, f"truncated file: {available:,} of {expected:,} bytes", "unreadable")
    if not finite:
        raise VolumeError(path, "non-finite values (NaN or Inf) in the image", "not_ct")


def _first_itk_line(error: RuntimeError) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK messages start with a source location; the reason is on the last non-empty line.
    return lines[-1][:200] if lines else "unknown reason"


def dicom_series(folder: Path) -> list[str]:
    """The files of the one DICOM series in ``folder``, sorted by slice position along its normal.

    Raises:
        VolumeError: when the folder holds no series or more than one.
    """
    return [name for name, _ in _series_headers(folder)]


def _series_headers(folder: Path) -> list[tuple[str, ImageInfo]]:
    """The one DICOM series in ``folder``: ``(file, header info)`` sorted by slice position."""
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as error:
        raise VolumeError(folder, f"unreadable DICOM folder ({_first_itk_line(error)})", "unreadable") from None
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
            raise VolumeError(name, f"unreadable DICOM file ({_first_itk_line(error)})", "unreadable") from None
        if normal is None:
            direction = np.asarray(reader.GetDirection()).reshape(3, 3)
            normal = direction[:, 2]
        slices.append((float(np.dot(normal, reader.GetOrigin())), name, _info_of(reader)))
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


def _read_dicom_series(folder: Path, limits: Limits) -> sitk.Image:
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
    _check_size(folder, shown, int(np.prod(size, dtype=np.int64)), series[0][1].bytes_per_voxel, limits)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise VolumeError(folder, f"unreadable DICOM series ({_first_itk_line(error)})", "unreadable") from None


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
        VolumeError: unreadable or truncated file, not 3-D, not scalar, too large, impossible
            spacing, NIfTI qform/sform that disagree, non-finite values, or (with ``check_ct``) not a CT.
    """
    path = Path(path)
    array, geometry = _read_array(path, Limits(max_voxels, max_bytes))
    if check_ct:
        check_ct_values(path, array)
    return array, geometry


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
    _check_size(path, shown, int(np.prod(size, dtype=np.int64)), info.bytes_per_voxel, limits)
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


def read_labels(path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS) -> tuple[np.ndarray, Geometry]:
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


def read_label(
    path: str | os.PathLike, reference: Geometry, *, image_path: str | os.PathLike | None = None
) -> np.ndarray:
    """Read a label volume that must lie on the grid of its CT (:func:`read_labels`, then the grid).

    Args:
        path: the label file.
        reference: geometry of the CT the labels belong to.
        image_path: the CT's path, named in the grid-mismatch error.

    Returns:
        The ``(z, y, x)`` uint8 label array.

    Raises:
        VolumeError: as :func:`read_labels`, or the grid differs from the CT.
    """
    array, geometry = read_labels(path, limits=UNLIMITED)  # the CT passed the limits; its labels follow it
    if not geometry.same_grid(reference):
        against = f" of {image_path}" if image_path else ""
        difference = grid_difference(geometry, reference)
        raise VolumeError(path, f"label grid differs from the CT grid{against}: {difference}")
    return array


def grid_difference(mine: Geometry, reference: Geometry) -> str:
    """The first of size, spacing, origin, direction that differs between two grids, both values shown."""
    for name in ("size", "spacing", "origin", "direction"):
        values, expected = np.asarray(getattr(mine, name), float), np.asarray(getattr(reference, name), float)
        if values.shape != expected.shape or not np.allclose(values, expected, atol=1e-4):
            shown = lambda v: "(" + ", ".join(f"{x:g}" for x in v) + ")"  # noqa: E731
            return f"{name} {shown(values)} vs {shown(expected)}"
    return "origin differs by more than a fraction of a voxel"


def replace_atomically(path: str | os.PathLike, write: Callable[[Path], object], suffix: str = "") -> None:
    """Call ``write(temporary)`` for a temporary file beside ``path`` (name ending in ``suffix``),
    then rename it over ``path``: a reader sees the old file or the whole new one, never a half one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`replace_atomically`)."""
    replace_atomically(path, lambda temporary: temporary.write_text(text))


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
